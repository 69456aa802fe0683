r"""The accelerator check: full-size GCD speed on one GPU or TPU chip, in one command (≤ 10 min).

  python bench/accelerator.py                          # full size: 14×256×384, bf16, 25 steps with guidance
  python bench/accelerator.py --parts forward,sample   # skip the train step
  python bench/accelerator.py --model tiny             # the same code path on CPU (64×64 frames), in minutes

Random weights of the real shapes (nothing to download). Three measurements, each the median of --repeats
calls after one warm-up call (compile time reported separately):

* `forward`: the GCD U-Net forward for 1 video (14 frame rows at 32×48 latents), bf16 compute: time,
  TFLOP/s (FLOPs from XLA's cost analysis of the compiled program) and MFU against the chip's bf16 peak.
* `sample`: the whole `gcd-jax sample` program (`bench/programs.py: sample_program`): CLIP + VAE conditioning,
  25 Euler steps on the doubled (guided) batch, VAE decode. Its FLOPs are 25 × the forward of the doubled
  batch (313 TFLOP at full size, the conditioning and decode add ~1 %), since XLA's cost analysis counts a
  loop body once. Anchor: SVD-XT's 25 frames × 25 steps take 23 s on an H100 with TensorRT.
* `train`: the train step of `gcd-jax train` (`bench/programs.py: train_program`), 1 video, remat full,
  in-step VAE + CLIP, Adam + EMA: time and MFU (model FLOPs from the remat-free lowering).

Prints one JSON record and a one-line summary. The peak is looked up from the device kind (PEAK_BF16_TFLOPS;
--peak-tflops overrides it).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import programs  # pylint: disable=g-import-not-at-top,wrong-import-position

# Dense bf16 peak per chip (vendor data sheets), matched against jax's device_kind.
PEAK_BF16_TFLOPS = {'H200': 989.0, 'H100': 989.0, 'A100': 312.0, 'L4': 121.0, 'L40S': 362.0, 'A10G': 70.0,
                    'TPU v5 lite': 197.0, 'TPU v6 lite': 918.0, 'TPU v5': 459.0, 'TPU v4': 275.0}


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  p.add_argument('--config', default='configs/gcd.py:data=kubric,traj=gradual,az=90')
  p.add_argument('--model', default=None, help='model preset instead of the config\'s (tiny: a CPU check)')
  p.add_argument('--parts', default='forward,sample,train')
  p.add_argument('--frames', type=int, default=14)
  p.add_argument('--height', type=int, default=None, help='frame height (default 256; 64 with --model tiny)')
  p.add_argument('--width', type=int, default=None, help='frame width (default 384; 64 with --model tiny)')
  p.add_argument('--steps', type=int, default=25)
  p.add_argument('--dtype', default='bfloat16')
  p.add_argument('--attention', default='auto')
  p.add_argument('--repeats', type=int, default=3)
  p.add_argument('--peak-tflops', type=float, default=0.0, help='bf16 peak of the chip (0: from its kind)')
  p.add_argument('--json', default=None, help='also write the record here')
  return p.parse_args(argv)


def peak_tflops(device, override: float) -> float:
  if override:
    return override
  kind = device.device_kind
  for name in sorted(PEAK_BF16_TFLOPS, key=len, reverse=True):  # 'TPU v5 lite' before 'TPU v5'
    if name in kind:
      return PEAK_BF16_TFLOPS[name]
  return 0.0


def timed(fn, args, repeats: int) -> tuple[float, float, list[float]]:
  """(first call s, median steady s, all steady times); fn: a compiled function."""
  import jax  # pylint: disable=g-import-not-at-top
  t0 = time.perf_counter()
  jax.block_until_ready(fn(*args))
  first = time.perf_counter() - t0
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return first, statistics.median(times), times


def flops_of(compiled) -> float:
  ca = compiled.cost_analysis()
  ca = (ca[0] if isinstance(ca, (list, tuple)) else ca) or {}
  return float(ca.get('flops', 0.0))


def forward_part(cfg, mesh, rows: int, h: int, w: int, repeats: int) -> dict:
  """The U-Net forward on `rows` frame rows (one guided step's batch when rows = 2·T)."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from jax.sharding import NamedSharding, PartitionSpec as P  # pylint: disable=g-import-not-at-top
  from gcd_jax.models import attention  # pylint: disable=g-import-not-at-top
  from gcd_jax.models.gcd import build_gcd_network  # pylint: disable=g-import-not-at-top
  from gcd_jax.train import train_step as ts  # pylint: disable=g-import-not-at-top
  graphdef, state = nnx.split(ts.abstract_module(build_gcd_network, cfg.model).unet)
  state = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), state)
  rep = NamedSharding(mesh, P())
  params = programs.materialise(state, jax.tree.map(lambda _: rep, state), 'weights')
  u = cfg.model.unet
  sds, f32 = jax.ShapeDtypeStruct, np.float32
  lat_h, lat_w = h // 8, w // 8
  y_dim = int(u.adm_in_channels) + int(u.get('aux_emb_dim', 0) or 0)  # + the camera embedding
  abstract = (sds((rows, lat_h, lat_w, int(u.in_channels)), f32), sds((rows,), f32),
              sds((rows, 1, int(u.context_dim)), f32), sds((rows, y_dim), f32))
  inputs = programs.materialise(abstract, tuple(rep for _ in abstract), 'inputs', seed=1)
  backend = attention.Backend(impl=cfg.model.attention, mesh=mesh, row_axes=())
  t = int(cfg.model.num_frames)

  @jax.jit
  def forward(params, *inputs):
    with attention.use_backend(backend):
      return nnx.merge(graphdef, params)(*inputs, num_frames=t)

  t0 = time.perf_counter()
  compiled = forward.lower(params, *inputs).compile()
  compile_s = time.perf_counter() - t0
  first, med, times = timed(compiled, (params, *inputs), repeats)
  return dict(rows=rows, compile_s=compile_s, first_call_s=first, time_s=med, times_s=times, tflop=flops_of(compiled) / 1e12)


def sample_part(cfg, mesh, t, h, w, steps, repeats) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  jitted, (state, batch, keys) = programs.sample_program(cfg, mesh, 1, t, h, w, steps)
  t0 = time.perf_counter()
  compiled = jitted.lower(state, batch, keys).compile()
  compile_s = time.perf_counter() - t0
  in_sh = compiled.input_shardings[0]
  rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  args = (programs.materialise(state, in_sh[0], 'weights', fallback=rep),
          programs.materialise(batch, in_sh[1], 'inputs', seed=7, fallback=rep),
          jax.device_put(jax.numpy.zeros(keys.shape, keys.dtype), in_sh[2]))
  first, med, times = timed(compiled, args, repeats)
  return dict(videos=1, steps=steps, compile_s=compile_s, first_call_s=first, time_s=med, times_s=times)


def train_part(cfg, mesh, t, h, w, repeats) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  jitted, (state, frozen, batch) = programs.train_program(cfg, mesh, 1, t, h, w)
  t0 = time.perf_counter()
  compiled = jitted.lower(state, frozen, batch).compile()
  compile_s = time.perf_counter() - t0
  state_sh, frozen_sh, batch_sh = compiled.input_shardings[0]
  tflop = flops_of(compiled) / 1e12
  saved = cfg.model.remat
  cfg.model.remat = 'none'
  j2, a2 = programs.train_program(cfg, mesh, 1, t, h, w)
  model_tflop = flops_of(j2.lower(*a2)) / 1e12  # the remat-free program: recomputation is not model work
  cfg.model.remat = saved
  weights = {k: v for k, v in state.items() if k in ('params', 'ema')}
  rest = {k: v for k, v in state.items() if k not in weights}
  rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  st = dict(programs.materialise(weights, {k: state_sh[k] for k in weights}, 'weights', fallback=rep),
            **programs.materialise(rest, {k: state_sh[k] for k in rest}, 'zeros', fallback=rep))
  fr = programs.materialise(frozen, frozen_sh, 'weights', seed=3, fallback=rep)
  bt = programs.materialise(batch, batch_sh, 'inputs', seed=5, fallback=rep)
  holder = {'state': st}

  def step(fr, bt):  # the state is donated: feed each call the previous call's state
    holder['state'], metrics = compiled(holder['state'], fr, bt)
    return metrics

  first, med, times = timed(step, (fr, bt), repeats)
  return dict(videos=1, compile_s=compile_s, first_call_s=first, time_s=med, times_s=times, hlo_tflop=tflop, model_tflop=model_tflop)


def main(argv=None) -> int:
  args = parse_args(argv)
  import jax  # pylint: disable=g-import-not-at-top
  from gcd_jax import config_flags  # pylint: disable=g-import-not-at-top
  from gcd_jax.models import presets  # pylint: disable=g-import-not-at-top
  from gcd_jax.train import sharding as sh  # pylint: disable=g-import-not-at-top
  cfg = config_flags.load_config(args.config)
  if args.model:
    cfg.model = presets.get_config(args.model)
  cfg.features = 'in_step'
  cfg.model.remat = 'full'
  cfg.model.dtype = args.dtype
  cfg.model.attention = args.attention
  cfg.model.num_frames = cfg.data.num_frames = args.frames
  dev = jax.devices()[0]
  mesh = sh.make_mesh((1, 1, 1), sh.MESH_AXES, devices=[dev])
  peak = peak_tflops(dev, args.peak_tflops)
  # The tiny model is a CPU check of the code path: at 256×384 its ×2 VAE leaves 128×192 latents, whose
  # full-frame attention alone needs tens of GB.
  small = args.model == 'tiny'
  t, h, w = args.frames, args.height or (64 if small else 256), args.width or (64 if small else 384)
  rec = dict(device=dev.device_kind, platform=dev.platform, peak_bf16_tflops=peak, model=cfg.model.name,
             frames=t, height=h, width=w, dtype=args.dtype, attention=cfg.model.attention)
  parts = [p for p in args.parts.split(',') if p]
  t_start = time.perf_counter()
  mfu = lambda tflop, s: (tflop / s / peak) if peak and s else None
  fwd2 = None
  if 'forward' in parts or 'sample' in parts:
    rec['forward'] = forward_part(cfg, mesh, t, h, w, args.repeats)
    f = rec['forward']
    f['tflops_per_s'] = f['tflop'] / f['time_s']
    f['mfu'] = mfu(f['tflop'], f['time_s'])
    fwd2 = 2 * f['tflop']  # the guided step's doubled batch
  if 'sample' in parts:
    rec['sample'] = s = sample_part(cfg, mesh, t, h, w, args.steps, args.repeats)
    s['tflop_estimate'] = args.steps * fwd2
    s['mfu'] = mfu(s['tflop_estimate'], s['time_s'])
  if 'train' in parts:
    rec['train'] = tr = train_part(cfg, mesh, t, h, w, args.repeats)
    tr['mfu'] = mfu(tr['model_tflop'], tr['time_s'])
  rec['total_s'] = time.perf_counter() - t_start
  print(json.dumps(rec, indent=1), flush=True)
  if args.json:
    with open(args.json, 'w') as fh:
      json.dump(rec, fh, indent=1)
  pct = lambda x: f'{x:.0%}' if x is not None else 'n/a'
  line = [f'SUMMARY {rec["device"]} ({cfg.model.name}, {t}×{h}×{w}, {args.dtype}):']
  if 'forward' in rec:
    f = rec['forward']
    line.append(f'U-Net forward {f["time_s"] * 1e3:.1f} ms, {f["tflops_per_s"]:.3g} TFLOP/s, MFU {pct(f["mfu"])};')
  if 'sample' in rec:
    line.append(f'sampling ({args.steps} steps, CFG, decode) {rec["sample"]["time_s"]:.2f} s, MFU {pct(rec["sample"]["mfu"])};')
  if 'train' in rec:
    line.append(f'train step {rec["train"]["time_s"]:.3f} s, MFU {pct(rec["train"]["mfu"])};')
  line.append(f'total {rec["total_s"]:.0f} s')
  print(' '.join(line), flush=True)
  return 0


if __name__ == '__main__':
  sys.exit(main())
