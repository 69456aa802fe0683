r"""Compiles the full-size GCD programs for a TPU topology with the real TPU compiler, on a CPU-only machine.

  pip install -e ".[tpu]"                                              # libtpu (the TPU compiler)
  python bench/tpu_compile.py --topology v5e:2x4                       # train step, 1 video/chip, 8 chips
  python bench/tpu_compile.py --topology v5p:2x2x2 --batch-per-chip 4  # 4 videos/chip
  python bench/tpu_compile.py --topology v5e:2x4 --slices 2            # 2 slices over DCN (hybrid mesh)
  python bench/tpu_compile.py --topology v5p:2x2x2 --program sample --chips 1   # the sampler on one chip
  python bench/tpu_compile.py --topology v6e:2x4 --fit                 # the largest videos/chip that fit
  python bench/tpu_compile.py --topology v5e:2x4 --model tiny          # minutes: the tiny model, same path

As MaxText's `train_compile.py` does: `jax.experimental.topologies.get_topology_desc` describes the TPU
chips, the program is lowered over a `Mesh` of those device descriptions from abstract shapes
(`jax.ShapeDtypeStruct`, nothing is allocated) and compiled by libtpu's XLA:TPU. The figures are the TPU
compiler's own: `memory_analysis()` per chip (arguments, outputs, aliased, temporaries, peak) and
`cost_analysis()` (FLOPs and HBM bytes per chip). From the chip's published bf16 peak and HBM bandwidth
(CHIPS below) it prints the roofline lower bound on the step time, max(FLOPs/peak, bytes/bandwidth), and
the MFU ceiling that bound implies: model FLOPs (the same program lowered without remat, so the
recomputation is not counted as useful work, and with XLA attention, whose FLOPs cost analysis can count; for
one CPU device, since a lowering for TPU device descriptions has no cost analysis) / (peak × bound).

Caveats: the TPU compiler's FLOPs leave out the Pallas flash-attention calls (opaque custom calls), and its
'bytes accessed' sums the operands and results of every fused op, an upper bound on HBM traffic; the
memory-bound roofline it gives is therefore pessimistic.

Programs (the reference run's shapes, docs/reference.md §3: 14 frames at 256×384):
* `train`: the jitted train step of `gcd_jax/train/train_step.py` exactly as `gcd-jax train` builds it
  (FSDP over the chips, in-step VAE + CLIP, remat, bf16 compute, Adam, EMA), the state donated.
* `sample`: `gcd_jax/evaluate/generator.py: sample_videos`, the program `gcd-jax sample` runs: CLIP and VAE
  conditioning of the input video, 25 Euler steps with classifier-free guidance (the doubled batch), VAE
  decode. Parameters replicated, videos over the chips. XLA's cost analysis counts the 25-step loop's body once, so the step
  (the doubled-batch U-Net forward) is also compiled alone and added 24 more times: `full_call` in the record
  holds the whole sampling call's FLOPs, bytes, roofline and MFU ceiling.

Attention: the model config's `attention` (default 'auto' = the Pallas flash kernel on TPU for the long
spatial sequences); `--attention xla` compiles the materialised-softmax path for comparison.
Prints one JSON record per compile and a one-line summary. Compile times on a 2-core VM are long (the
full train step: tens of minutes): this is a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import programs  # pylint: disable=g-import-not-at-top,wrong-import-position

GiB = 2 ** 30

# Published per-chip figures (cloud.google.com/tpu/docs: v5e, v6e, v5p, v4 system architecture pages).
CHIPS = {
    'TPU v5 lite': dict(name='v5e', hbm_gib=16, bf16_tflops=197.0, hbm_gbps=819.0),
    'TPU v6 lite': dict(name='v6e', hbm_gib=32, bf16_tflops=918.0, hbm_gbps=1640.0),
    'TPU v5': dict(name='v5p', hbm_gib=95, bf16_tflops=459.0, hbm_gbps=2765.0),
    'TPU v4': dict(name='v4', hbm_gib=32, bf16_tflops=275.0, hbm_gbps=1228.0),
}


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  p.add_argument('--topology', default='v5e:2x4', help='TPU topology name (v5e:2x4, v6e:2x4, v5p:2x2x2, ...)')
  p.add_argument('--slices', type=int, default=1, help='number of slices (> 1: a hybrid ICI × DCN mesh)')
  p.add_argument('--program', default='train', choices=('train', 'sample', 'both'))
  p.add_argument('--config', default='configs/gcd.py:data=kubric,traj=gradual,az=90',
                 help='training config (model, diffusion, optimiser, sharding rules)')
  p.add_argument('--model', default=None, help='model preset instead of the config\'s (e.g. tiny)')
  p.add_argument('--batch-per-chip', type=int, default=1, help='videos per chip (train)')
  p.add_argument('--chips', type=int, default=0, help='use only the first N chips (0: all)')
  p.add_argument('--frames', type=int, default=14)
  p.add_argument('--height', type=int, default=256)
  p.add_argument('--width', type=int, default=384)
  p.add_argument('--steps', type=int, default=25, help='sampler steps')
  p.add_argument('--remat', default='full', choices=('none', 'full', 'dots'))
  p.add_argument('--dtype', default='bfloat16')
  p.add_argument('--attention', default='auto', help='auto | xla | flash')
  p.add_argument('--fit', action='store_true',
                 help='train: compile 1 and 2 videos/chip, extrapolate the largest count under the chip\'s HBM, '
                      'and compile that count to confirm')
  p.add_argument('--no-model-flops', action='store_true', help='skip the remat-free lowering (MFU numerator)')
  p.add_argument('--json', default=None, help='also append the records to this file (JSON lines)')
  args = p.parse_args(argv)
  for name, least in (('slices', 1), ('batch_per_chip', 1), ('chips', 0), ('frames', 1), ('height', 8),
                      ('width', 8), ('steps', 1)):
    if getattr(args, name) < least:
      p.error(f'--{name.replace("_", "-")} {getattr(args, name)}: must be at least {least}')
  if args.height % 8 or args.width % 8:
    p.error(f'--height {args.height} --width {args.width}: frame sides must be multiples of 8 (the VAE '
            'downsamples by up to 8; the reference uses 256 × 384)')
  return args


def setup_env() -> None:
  """libtpu compiles without a TPU; these keep it from looking for a TPU VM's metadata server."""
  os.environ.setdefault('JAX_PLATFORMS', 'cpu')
  os.environ.setdefault('TPU_SKIP_MDS_QUERY', '1')
  os.environ.setdefault('TPU_ACCELERATOR_TYPE', 'v5p-16')
  os.environ.setdefault('TPU_WORKER_HOSTNAMES', 'localhost')
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')


def topology_devices(name: str, slices: int):
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  try:
    desc = topologies.get_topology_desc(topology_name=name, platform='tpu', num_slices=slices)
  except Exception as e:  # pylint: disable=broad-except
    raise SystemExit(f'tpu_compile: cannot describe TPU topology {name!r} ({e}). Is libtpu installed '
                     '(pip install -e ".[tpu]")? Names: v5e:2x4, v6e:2x4, v5p:2x2x2, v4:2x2x2.') from None
  return desc.devices


def make_mesh(devices, slices: int):
  """(data, fsdp, tensor): FSDP over the chips of a slice; with slices > 1 the 'data' axis spans the slices
  (DCN), as `gcd_jax/train/sharding.py: make_mesh` builds it for a multi-slice job."""
  from gcd_jax.train import sharding as sh  # pylint: disable=g-import-not-at-top
  per_slice = len(devices) // slices
  return sh.make_mesh((1, per_slice, 1), sh.MESH_AXES, devices=devices, dcn_shape=(slices, 1, 1))


def chip_of(devices) -> dict:
  kind = devices[0].device_kind
  if kind not in CHIPS:
    raise SystemExit(f'tpu_compile: no published figures for {kind!r}; add it to CHIPS')
  return dict(CHIPS[kind], device_kind=kind)


def load_config(args):
  from gcd_jax import config_flags  # pylint: disable=g-import-not-at-top
  from gcd_jax.models import presets  # pylint: disable=g-import-not-at-top
  cfg = config_flags.load_config(args.config)
  if args.model:
    cfg.model = presets.get_config(args.model)
  cfg.features = 'in_step'
  cfg.model.remat = args.remat
  cfg.model.dtype = args.dtype
  cfg.model.attention = args.attention
  cfg.model.num_frames = cfg.data.num_frames = args.frames
  return cfg


def analyse(lowered, compiled, chip: dict, model_flops: float | None) -> dict:
  from gcd_jax.train import metrics as metrics_lib  # pylint: disable=g-import-not-at-top
  mem = metrics_lib.compiled_memory(compiled)
  ma = compiled.memory_analysis()
  ca = compiled.cost_analysis()
  ca = (ca[0] if isinstance(ca, (list, tuple)) else ca) or {}
  flops = float(ca.get('flops', 0.0))
  hbm_bytes = float(ca.get('bytes accessed', 0.0))
  peak = int(getattr(ma, 'peak_memory_in_bytes', 0) or mem['peak_estimate_bytes'])
  t_compute = flops / (chip['bf16_tflops'] * 1e12)
  t_memory = hbm_bytes / (chip['hbm_gbps'] * 1e9)
  bound = max(t_compute, t_memory)
  out = dict(
      per_chip_gib=dict(argument=mem['argument_size_in_bytes'] / GiB, output=mem['output_size_in_bytes'] / GiB,
                        alias=mem['alias_size_in_bytes'] / GiB, temp=mem['temp_size_in_bytes'] / GiB,
                        peak=peak / GiB),
      fits=peak <= chip['hbm_gib'] * GiB,
      tflops_per_chip=flops / 1e12, hbm_gb_per_chip=hbm_bytes / 1e9,
      roofline=dict(compute_s=t_compute, memory_s=t_memory, lower_bound_s=bound,
                    bound_by='compute' if t_compute >= t_memory else 'memory',
                    hfu_ceiling=t_compute / bound if bound else 0.0))
  if model_flops:
    out['model_tflops_per_chip'] = model_flops / 1e12
    out['roofline']['mfu_ceiling'] = model_flops / (chip['bf16_tflops'] * 1e12 * bound) if bound else 0.0
  for k, v in list(out['per_chip_gib'].items()):
    out['per_chip_gib'][k] = round(v, 3)
  return out


def out_of_memory(message: str) -> dict | None:
  """The TPU compiler's refusal of a program that needs more HBM than the chip has (RESOURCE_EXHAUSTED, e.g.
  'the total memory required for HLO temporaries (33.21G) exceeds available HBM (31.25G)') as a record:
  fits False, what it asked for and what was available, in GiB. None for any other error."""
  import re  # pylint: disable=g-import-not-at-top
  if 'RESOURCE_EXHAUSTED' not in message and 'Ran out of memory' not in message:
    return None
  scale = {'K': 2.0 ** -20, 'M': 2.0 ** -10, 'G': 1.0, 'T': 2.0 ** 10}
  out = dict(fits=False, error=message.strip().splitlines()[0][:300])
  m = re.search(r'required for ([\w ]+?) \(([\d.]+)([KMGT])\) exceeds available HBM \(([\d.]+)([KMGT])\)', message)
  if m:
    out['refused'] = dict(what=m.group(1), required_gib=float(m.group(2)) * scale[m.group(3)],
                          available_gib=float(m.group(4)) * scale[m.group(5)])
  # The other form (CompileTimeHbmOom): 'Used 31.25G of 31.25G hbm. Exceeded hbm capacity by 2.51M.'
  m = re.search(r'Used ([\d.]+)([KMGT]) of ([\d.]+)([KMGT]) hbm\. Exceeded hbm capacity by ([\d.]+)([KMGT])', message)
  if m and 'refused' not in out:
    available = float(m.group(3)) * scale[m.group(4)]
    out['refused'] = dict(what='the program', required_gib=available + float(m.group(5)) * scale[m.group(6)],
                          available_gib=available)
  return out


def lower(program):
  jitted, abstract_args = program
  return jitted.lower(*abstract_args)


def lowered_flops(lowered) -> float:
  ca = lowered.cost_analysis()
  ca = (ca[0] if isinstance(ca, (list, tuple)) else ca) or {}
  return float(ca.get('flops', 0.0))


def model_flops_per_chip(cfg, program: str, chips: int, per_chip: int, t: int, h: int, w: int, steps: int) -> float:
  """The FLOPs a step must do, per chip: the program lowered without remat (recomputation is overhead, not
  model FLOPs) and with XLA attention (a Pallas call is opaque to cost analysis), for ONE CPU device holding
  the whole batch, by XLA's HLO cost analysis; divided by the chips. A lowering for TPU device descriptions
  has no cost analysis without a TPU client (it returns None), hence the CPU lowering of the same program."""
  import copy  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from gcd_jax.train import sharding as sh  # pylint: disable=g-import-not-at-top
  c = copy.deepcopy(cfg)
  c.model.remat = 'none'
  c.model.attention = 'xla'
  mesh = sh.make_mesh((1, 1, 1), sh.MESH_AXES, devices=jax.devices('cpu')[:1])
  if program == 'train':
    lowered = lower(programs.train_program(c, mesh, per_chip * chips, t, h, w))
  else:
    lowered = lower(programs.sample_program(c, mesh, chips, t, h, w, steps))
  return lowered_flops(lowered) / chips


def compile_one(args, cfg, mesh, chip, program: str, batch_per_chip: int) -> dict:
  t, h, w = args.frames, args.height, args.width
  rec = dict(topology=args.topology, slices=args.slices, chips=mesh.size, chip=chip['name'], program=program,
             model=cfg.model.name, attention=cfg.model.attention, remat=cfg.model.remat, dtype=cfg.model.dtype,
             frames=t, height=h, width=w)
  t0 = time.perf_counter()
  if program == 'train':
    rec['videos_per_chip'] = batch_per_chip
    lowered = lower(programs.train_program(cfg, mesh, batch_per_chip, t, h, w))
  else:
    rec['videos'] = mesh.size
    rec['steps'] = args.steps
    lowered = lower(programs.sample_program(cfg, mesh, mesh.size, t, h, w, args.steps))
  rec['lower_s'] = round(time.perf_counter() - t0, 1)
  print(f'[tpu_compile] {program} lowered in {rec["lower_s"]} s; compiling for {args.topology} '
        f'({mesh.size} chips)...', flush=True)
  t0 = time.perf_counter()
  try:
    compiled = lowered.compile()
  except Exception as e:  # pylint: disable=broad-except
    rec['compile_s'] = round(time.perf_counter() - t0, 1)
    oom = out_of_memory(str(e))
    if oom is None:
      raise
    rec.update(oom)  # the TPU compiler refuses a program that exceeds the chip's HBM: a result, not a crash
    return rec
  rec['compile_s'] = round(time.perf_counter() - t0, 1)
  model_flops = None
  if not args.no_model_flops:
    model_flops = model_flops_per_chip(cfg, program, mesh.size, batch_per_chip, t, h, w, args.steps)
  rec.update(analyse(lowered, compiled, chip, model_flops))
  if program == 'sample':
    full_call(args, cfg, mesh, chip, rec, model_flops)
  return rec


def full_call(args, cfg, mesh, chip, rec: dict, model_flops: float | None) -> None:
  """XLA's cost analysis counts a while loop's body once, whatever its trip count: the sampler program's
  figures are the conditioning, ONE of its U-Net steps and the decode. The step (the doubled-batch U-Net
  forward, programs.unet_step_program) is compiled on its own and added (steps − 1) more times: the full
  sampling call's FLOPs, bytes, roofline and MFU ceiling go to rec['full_call']."""
  import copy  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from gcd_jax.train import sharding as sh  # pylint: disable=g-import-not-at-top
  t, h, w, n = args.frames, args.height, args.width, args.steps - 1
  t0 = time.perf_counter()
  step = lower(programs.unet_step_program(cfg, mesh, mesh.size, t, h, w)).compile()
  ca = step.cost_analysis()
  ca = (ca[0] if isinstance(ca, (list, tuple)) else ca) or {}
  step_flops, step_bytes = float(ca.get('flops', 0.0)) / mesh.size, float(ca.get('bytes accessed', 0.0)) / mesh.size
  flops = rec['tflops_per_chip'] * 1e12 + n * step_flops
  hbm = rec['hbm_gb_per_chip'] * 1e9 + n * step_bytes
  t_compute, t_memory = flops / (chip['bf16_tflops'] * 1e12), hbm / (chip['hbm_gbps'] * 1e9)
  bound = max(t_compute, t_memory)
  out = dict(step_tflops_per_chip=step_flops / 1e12, step_hbm_gb_per_chip=step_bytes / 1e9,
             step_compile_s=round(time.perf_counter() - t0, 1), tflops_per_chip=flops / 1e12,
             hbm_gb_per_chip=hbm / 1e9, compute_s=t_compute, memory_s=t_memory, lower_bound_s=bound,
             bound_by='compute' if t_compute >= t_memory else 'memory')
  if model_flops:
    c = copy.deepcopy(cfg)
    c.model.attention = 'xla'
    cpu = sh.make_mesh((1, 1, 1), sh.MESH_AXES, devices=jax.devices('cpu')[:1])
    step_model = lowered_flops(lower(programs.unet_step_program(c, cpu, mesh.size, t, h, w))) / mesh.size
    out['model_tflops_per_chip'] = (model_flops + n * step_model) / 1e12
    out['mfu_ceiling'] = (model_flops + n * step_model) / (chip['bf16_tflops'] * 1e12 * bound)
  rec['full_call'] = out


def emit(rec: dict, path: str | None) -> None:
  print(json.dumps(rec, indent=1), flush=True)
  if path:
    with open(path, 'a') as f:
      f.write(json.dumps(rec) + '\n')
  what = (f'{rec["videos_per_chip"]} video(s)/chip' if rec['program'] == 'train' else
          f'{rec["videos"]} video(s), {rec["steps"]} steps')
  if 'roofline' not in rec:  # refused by the compiler (out_of_memory)
    need = rec.get('refused', {})
    print(f'SUMMARY {rec["program"]} {rec["model"]} on {rec["topology"]}×{rec["slices"]} ({what}): DOES NOT FIT, '
          + (f'{need["what"]} need {need["required_gib"]:.2f} GiB of {need["available_gib"]:.2f} GiB available; '
             if need else f'{rec["error"]}; ') + f'compile {rec["compile_s"]:.0f} s', flush=True)
    return
  r = rec['roofline']
  if 'full_call' in rec:  # the sampler: the whole 25-step call, not the program's one counted loop iteration
    r = dict(rec['full_call'])
    flops = r['tflops_per_chip']
  else:
    flops = rec['tflops_per_chip']
  print(f'SUMMARY {rec["program"]} {rec["model"]} on {rec["topology"]}×{rec["slices"]} ({what}, attention '
        f'{rec["attention"]}): peak {rec["per_chip_gib"]["peak"]:.2f} GiB/chip of {CHIP_HBM[rec["chip"]]} '
        f'({"fits" if rec["fits"] else "DOES NOT FIT"}); {flops:.1f} TFLOP/chip; roofline '
        f'≥ {r["lower_bound_s"]:.3f} s ({r["bound_by"]}-bound), '
        f'MFU ceiling {format(r["mfu_ceiling"], ".0%") if "mfu_ceiling" in r else "n/a"}; '
        f'compile {rec["compile_s"]:.0f} s', flush=True)


CHIP_HBM = {c['name']: c['hbm_gib'] for c in CHIPS.values()}


def main(argv=None) -> int:
  args = parse_args(argv)
  setup_env()
  devices = topology_devices(args.topology, args.slices)
  if args.chips:
    devices = devices[:args.chips]
  chip = chip_of(devices)
  cfg = load_config(args)
  slices = args.slices if not args.chips else 1
  mesh = make_mesh(devices, slices)
  programs = ('train', 'sample') if args.program == 'both' else (args.program,)
  for program in programs:
    if program == 'train' and args.fit:
      fit(args, cfg, mesh, chip)
      continue
    emit(compile_one(args, cfg, mesh, chip, program, args.batch_per_chip), args.json)
  return 0


def fit(args, cfg, mesh, chip) -> None:
  """Largest videos/chip under the chip's HBM: peak is affine in the batch (state + b × activations), so two
  compiles give the slope; the extrapolated count is compiled to confirm (and stepped down if it misses)."""
  recs = {}
  for b in (1, 2):
    recs[b] = compile_one(args, cfg, mesh, chip, 'train', b)
    emit(recs[b], args.json)
  if not recs[2]['fits']:
    print(f'FIT {chip["name"]}: largest videos/chip = {1 if recs[1]["fits"] else 0} (compiled)', flush=True)
    return
  p1, p2 = recs[1]['per_chip_gib']['peak'], recs[2]['per_chip_gib']['peak']
  slope = max(p2 - p1, 1e-6)
  guess = int((chip['hbm_gib'] - (p1 - slope)) // slope)
  # The peak is not exactly affine (v6e:2x4: 1 → 2 videos added 5.60 GiB, but 5 videos needed 33.2 GiB of
  # temporaries, not the 30.4 the line predicts), so the guess is compiled and stepped down until one fits.
  refused = None  # the smallest count the compiler refused
  while guess > 2:
    rec = compile_one(args, cfg, mesh, chip, 'train', guess)
    emit(rec, args.json)
    if rec['fits']:
      break
    refused = guess
    guess -= 1
  largest = max(guess, 2)
  # Exact only when the next count up was refused; when the extrapolated count fits at once, more was not tried.
  answer = f'= {largest}' if refused == largest + 1 else f'≥ {largest} ({largest + 1} not compiled)'
  print(f'FIT {chip["name"]}: largest videos/chip {answer} (peak {p1:.2f} GiB at 1, '
        f'+{slope:.2f} GiB per video from 1 to 2)', flush=True)


if __name__ == '__main__':
  sys.exit(main())
