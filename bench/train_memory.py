r"""AOT memory/FLOP bench of the FULL-SIZE GCD train step (nothing is allocated: abstract shapes only).

  python bench/train_memory.py                               # 8 fake CPU devices, FSDP, remat full, in-step VAE+CLIP
  python bench/train_memory.py --features precomputed --remat dots
  python bench/train_memory.py --config configs/gcd.py:data=kubric --frames 14 --height 256 --width 384
  python bench/train_memory.py --dump /tmp/tm                # + the buffers live at XLA's peak
  python bench/train_memory.py --xla-cpu-remat cse           # stock XLA:CPU pipeline (remat undone, see below)

The TPU compiler's own figures for the same program: bench/tpu_compile.py (this file is the XLA:CPU stand-in).

Builds the abstract train state (GCD U-Net + camera embedder, float32 master weights, Adam moments) and
frozen VAE/CLIP with the config's sharding rules on a (1, 8, 1) mesh, lowers and compiles the jitted train
step for batch 1 video per device, then prints XLA's per-device memory analysis
(`compiled.memory_analysis()`) and FLOPs per step (`compiled.cost_analysis()`). XLA:CPU's buffer assignment
is a proxy for TPU's (same HLO, different fusion/layout decisions): read it as an estimate of the 16 GiB
TPU v5e budget. Compiling the full model on CPU takes 15-35 min and ~6 GB of RAM; the buffer assignment
(and --dump's peak listing) is ready after the first ~5-10 min, the rest is LLVM code generation.

Measured (14×256×384, 1 video/device, 8-way FSDP, bf16 compute, remat 'full'; GiB per device,
peak = argument + output − alias + temp; the state is donated, so output is fully aliased):

  stock XLA:CPU, nnx.remat          in_step     arg 2.50  temp 44.34  peak 46.84   39.7 TFLOP/device/step
                                    precomputed arg 2.14  temp 44.30  peak 46.44   23.5
  barriers kept, nnx.remat          in_step     arg 2.50  temp 12.76  peak 15.25
                                    precomputed arg 2.14  temp  8.57  peak 10.71
  barriers kept, ordered_checkpoint in_step     arg 2.50  temp  7.56  peak 10.05   39.7 (the default now)
                                    precomputed arg 2.14  temp  7.56  peak  9.70

What the 46 GiB was: NOT activations of a missing remat policy nor unsharded state (params + Adam are
2.14 GiB/device, 1/8 of 17.06 GiB; frozen VAE+CLIP and the batch add 0.36 GiB, sharded too), but XLA:CPU
undoing remat. jax.checkpoint protects each block's backward-pass recomputation with optimisation
barriers; XLA:CPU's `cse_barrier_expander` deletes them and a later CSE pass merges every recomputation
with its forward twin, so all forward activations stay live (the peak listed 5 × f32[14,5,1536,1536]
attention scores, 22 × f32[1536,14,1280] GEGLU erfc, ... of all level-0 blocks at once). XLA:TPU keeps the
barriers, so the default `--xla-cpu-remat keep` disables that pass (--xla_disable_hlo_passes=
cse_barrier_expander; same numerics, checked on a toy). Next, XLA's scheduler hoisted the FSDP all-gathers
of far-away blocks (all 21 full f32[3,3,1280,1280] conv kernels, 261 f32[1280,1280] ... live at the
in-step VAE peak): `models/transformer.py: ordered_checkpoint` ties each block's params to its input
(forward) and its residuals to the incoming cotangent (backward), which removes that.

What the remaining ~10 GiB is (peak in the backward of a level-0 spatial attention): the attention scores
of one block in f32 (3 × 0.62 GiB, `jax.nn.dot_product_attention` 'xla' = materialised [14·5, 1536, 1536];
a flash/splash kernel on TPU does not materialise them), 2 × 0.62 GiB of a broadcast scale constant that
XLA:CPU's YNN dot fusion materialises (CPU only), ~2.7 GiB of full-size f32 weight gradients of deeper
blocks waiting for their reduce-scatter, and gathered weights held in f32 because XLA:CPU upcasts bf16
convs/dots to f32 (TPU gathers and computes them in bf16, half the bytes). The scheduler choice
--xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED was worse (precomputed 13.3 vs 10.7 GiB).
cost_analysis() gives the same 39.7 TFLOP with and without the merged recomputation: it evidently counts
the program before XLA:CPU's late CSE, so the FLOPs include the remat recompute either way.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

GiB = 2 ** 30


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--config', default='configs/gcd.py:data=kubric,traj=gradual,az=90')
  p.add_argument('--features', default='in_step', choices=('in_step', 'precomputed'))
  p.add_argument('--remat', default='full', choices=('none', 'full', 'dots'))
  p.add_argument('--dtype', default='bfloat16')
  p.add_argument('--devices', type=int, default=8)
  p.add_argument('--batch-per-device', type=int, default=1)
  p.add_argument('--frames', type=int, default=14)
  p.add_argument('--height', type=int, default=256)
  p.add_argument('--width', type=int, default=384)
  p.add_argument('--xla-cpu-remat', default='keep', choices=('keep', 'cse'),
                 help="keep: XLA:CPU keeps jax.checkpoint's optimization barriers to the end, as the TPU "
                      "compiler does (--xla_disable_hlo_passes=cse_barrier_expander); cse: the stock XLA:CPU "
                      'pipeline, whose late CSE merges every recomputation back into the forward values '
                      '(remat silently undone)')
  p.add_argument('--dump', default=None, help='XLA dump folder; prints the buffers live at the peak')
  p.add_argument('--top', type=int, default=25, help='with --dump: how many peak buffers to print')
  p.add_argument('--budget-gib', type=float, default=16.0, help='per-device HBM (TPU v5e: 16)')
  return p.parse_args(argv)


def xla_flags(args: argparse.Namespace, flags: str) -> str:
  """XLA_FLAGS for this bench (XLA reads them once, at backend start: set before `import jax`)."""
  extra = []
  if 'xla_force_host_platform_device_count' not in flags:
    extra.append(f'--xla_force_host_platform_device_count={max(args.devices, 8)}')
  if args.xla_cpu_remat == 'keep' and 'cse_barrier_expander' not in flags:
    # XLA:CPU expands (deletes) optimization barriers and then runs CSE again, which merges each block's
    # backward-pass recomputation with its forward twin: every activation of the network stays live and
    # remat saves nothing (46.4 GiB/device at the default config). XLA:TPU keeps the barriers.
    extra.append('--xla_disable_hlo_passes=cse_barrier_expander')
  if args.dump:
    extra += [f'--xla_dump_to={args.dump}', '--xla_dump_hlo_as_text', '--xla_dump_hlo_module_re=.*step_fn.*']
  return ' '.join([flags] + extra).strip()


def main() -> int:
  args = parse_args()
  os.environ['XLA_FLAGS'] = xla_flags(args, os.environ.get('XLA_FLAGS', ''))
  os.environ.setdefault('JAX_PLATFORMS', 'cpu')
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  from gcd_jax import config_flags  # pylint: disable=g-import-not-at-top
  from gcd_jax.train import sharding as sh  # pylint: disable=g-import-not-at-top
  from gcd_jax.train import metrics as metrics_lib  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  import programs  # pylint: disable=g-import-not-at-top
  cfg = config_flags.load_config(args.config)
  cfg.features = args.features
  cfg.model.remat = args.remat
  cfg.model.dtype = args.dtype
  cfg.model.attention = 'xla'  # the XLA:CPU stand-in for TPU: the materialised attention (see above)
  cfg.model.num_frames = cfg.data.num_frames = args.frames
  devices = jax.devices()[:args.devices]
  mesh = sh.make_mesh((1, len(devices), 1), ('data', 'fsdp', 'tensor'), devices=devices)
  t, h, w = args.frames, args.height, args.width
  t0 = time.perf_counter()
  jitted, (abstract_state, frozen_abstract, batch) = programs.train_program(cfg, mesh, args.batch_per_device, t, h, w)
  b = batch['jpg'].shape[0]
  n_params = sum(int(np.prod(a.shape)) for a in abstract_state['params'].values())
  print(f'abstract build {time.perf_counter() - t0:.1f}s; trainable params {n_params:,}', flush=True)
  t0 = time.perf_counter()
  lowered = jitted.lower(abstract_state, frozen_abstract, batch)
  t_lower = time.perf_counter() - t0
  compiled = lowered.compile()
  t_compile = time.perf_counter() - t0 - t_lower
  mem = metrics_lib.compiled_memory(compiled)
  flops = metrics_lib.compiled_flops(compiled)
  state_bytes = sum(int(np.prod(a.shape)) * a.dtype.itemsize for a in jax.tree.leaves(abstract_state))
  out = dict(config=args.config, features=args.features, remat=args.remat, dtype=args.dtype,
             xla_cpu_remat=args.xla_cpu_remat, devices=len(devices), global_batch=b, frames=t, height=h, width=w, trainable_params=n_params,
             train_state_gib_total=state_bytes / GiB, lower_s=round(t_lower, 1), compile_s=round(t_compile, 1),
             per_device_gib={k.replace('_in_bytes', '').replace('_bytes', ''): round(v / GiB, 3) for k, v in mem.items()},
             flops_per_step_per_device=flops, tflops_per_step_global=flops * len(devices) / 1e12)
  out['fits_budget'] = mem['peak_estimate_bytes'] / GiB <= args.budget_gib
  print(json.dumps(out, indent=1), flush=True)
  if args.dump:
    print_peak_buffers(args.dump, args.top)
  return 0


def print_peak_buffers(dump_dir: str, top: int) -> None:
  """The largest buffers live at XLA's peak (from the `*-live-range.txt` the dump writes) and the
  per-op stack breakdown, so a memory figure can be traced to the ops that make it."""
  import glob  # pylint: disable=g-import-not-at-top
  import re  # pylint: disable=g-import-not-at-top
  files = sorted(glob.glob(os.path.join(dump_dir, '*step_fn*after_optimizations-live-range.txt')),
                 key=os.path.getmtime)
  if not files:
    print(f'no *-live-range.txt under {dump_dir}', flush=True)
    return
  text = open(files[-1]).read()
  peak = text.split('Live ranges at', 1)[-1]
  rows = re.findall(r'^\s+(\S+): (\d+) bytes', peak.split('Stack trace breakdown', 1)[0], re.M)
  rows = sorted(((int(b), n) for n, b in rows), reverse=True)
  print(f'peak buffers ({len(rows)} live, {sum(b for b, _ in rows) / GiB:.2f} GiB), largest {top}:')
  for b, n in rows[:top]:
    print(f'  {b / GiB:8.3f} GiB  {n}')
  stack = peak.split('Stack trace breakdown', 1)[-1].splitlines()
  print('\n'.join(stack[:60]), flush=True)


if __name__ == '__main__':
  sys.exit(main())
