r"""Full-size SVD U-Net forward: jitted Flax vs diffusers PyTorch, same weights, inputs and thread count.

  python bench/unet_forward.py                    # 1 video × 14 frames, 32×48 latents, float32, CPU
  python bench/unet_forward.py --preset tiny_svd  # seconds; checks the script itself

Prints a JSON record and a one-line summary: both times (median of --repeats after a warm-up), the ratio
flax/torch (goal ≤ 0.85), GFLOP/s of each against a measured 2048³ matmul peak, and the max abs difference
of the two outputs (a sanity check that both ran the same network). The FLOP count is XLA's cost analysis
of the compiled forward (docs/weights.md §6 measures 6.265 TFLOPs with FlopCounterMode at this size).
Needs ~14 GB of RAM at full size (two copies of 6.1 GB of weights).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import time

import numpy as np


def _median_time(fn, repeats: int) -> tuple[float, list[float]]:
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return float(np.median(times)), times


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--preset', default='svd', help='model preset of configs/models.py (no camera path)')
  parser.add_argument('--frames', type=int, default=14)
  parser.add_argument('--height', type=int, default=32, help='latent height')
  parser.add_argument('--width', type=int, default=48, help='latent width')
  parser.add_argument('--repeats', type=int, default=2)
  parser.add_argument('--json', default='', help='also write the record here')
  args = parser.parse_args()

  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  from diffusers import UNetSpatioTemporalConditionModel  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top

  from gcd_jax.models import presets as models  # pylint: disable=g-import-not-at-top
  from gcd_jax.convert import torch_layout  # pylint: disable=g-import-not-at-top
  from gcd_jax.convert.diffusers import diffusers_unet_config  # pylint: disable=g-import-not-at-top
  from gcd_jax.models.layers import timestep_embedding  # pylint: disable=g-import-not-at-top
  from gcd_jax.models.unet import VideoUNet  # pylint: disable=g-import-not-at-top

  threads = os.cpu_count() or 1
  torch.set_num_threads(threads)
  torch.manual_seed(0)
  # diffusers' ResBlock eps layout, so both sides compute the same function.
  cfg = models.get_config(f'{args.preset},eps=diffusers')
  if cfg.unet.aux_emb_dim:
    raise SystemExit(f'--preset {args.preset} has a camera path diffusers cannot run; use svd or tiny_svd')
  u = cfg.unet
  b, t, h, w = 1, args.frames, args.height, args.width

  # Matmul peak of this machine, both frameworks (the practical ceiling for GFLOP/s).
  n = 2048
  a_np = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
  mm_jax = jax.jit(lambda a: a @ a)
  a_j = jnp.asarray(a_np)
  mm_jax(a_j).block_until_ready()
  t_mm_jax, _ = _median_time(lambda: mm_jax(a_j).block_until_ready(), 5)
  a_t = torch.from_numpy(a_np)
  a_t @ a_t
  t_mm_torch, _ = _median_time(lambda: a_t @ a_t, 5)
  peak = 2 * n ** 3 / min(t_mm_jax, t_mm_torch) / 1e9

  # PyTorch reference with random weights (default init; zero-init layers randomised too).
  t0 = time.perf_counter()
  ref = UNetSpatioTemporalConditionModel(**diffusers_unet_config(cfg)).eval()
  with torch.no_grad():
    for p in ref.parameters():
      if p.ndim <= 1 or float(p.abs().max()) == 0.0:
        p.uniform_(-0.05, 0.05)
  build_torch_s = time.perf_counter() - t0

  # Same weights into Flax, tensor by tensor, into an abstract (unallocated) module.
  t0 = time.perf_counter()
  model = nnx.eval_shape(lambda: VideoUNet(cfg, rngs=nnx.Rngs(0)))
  state = {k: v.detach() for k, v in ref.state_dict().items()}
  shapes = {k: tuple(v.shape) for k, v in state.items()}
  torch_layout.load_torch_state(model, lambda k: state[k].numpy(), shapes, what='diffusers U-Net')
  del state
  gc.collect()
  copy_s = time.perf_counter() - t0

  rng = np.random.default_rng(1)
  x = rng.standard_normal((b, t, 8, h, w), dtype=np.float32)
  sigma = 2.0
  c_noise = np.float32(0.25 * np.log(sigma))
  ctx = rng.standard_normal((b, 1, u.context_dim), dtype=np.float32)
  ids = np.array([[6.0, 127.0, 0.02]], np.float32)  # fps_id, motion bucket, cond_aug (SVD defaults)

  # Flax: per-row inputs (the diffusers interface repeated over frames).
  x_rows = jnp.asarray(x.reshape(b * t, 8, h, w).transpose(0, 2, 3, 1))
  t_rows = jnp.full((b * t,), c_noise)
  ctx_rows = jnp.asarray(np.repeat(ctx, t, axis=0))
  y = jnp.concatenate([timestep_embedding(jnp.asarray(ids[:, i]), u.addition_time_embed_dim)
                       for i in range(3)], -1)
  y_rows = jnp.repeat(y, t, axis=0)
  graphdef, params = nnx.split(model)

  @jax.jit
  def forward(params, x_rows, t_rows, ctx_rows, y_rows):
    return nnx.merge(graphdef, params)(x_rows, t_rows, ctx_rows, y_rows, num_frames=t)

  t0 = time.perf_counter()
  compiled = forward.lower(params, x_rows, t_rows, ctx_rows, y_rows).compile()
  compile_s = time.perf_counter() - t0
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float(cost.get('flops', 0.0)) if cost else 0.0
  run_flax = lambda: compiled(params, x_rows, t_rows, ctx_rows, y_rows).block_until_ready()
  out_flax = np.asarray(run_flax())  # warm-up
  t_flax, flax_times = _median_time(run_flax, args.repeats)

  x_t, ts_t = torch.from_numpy(x), torch.full((b,), float(c_noise))
  ctx_t, ids_t = torch.from_numpy(ctx), torch.from_numpy(ids)

  def run_torch():
    with torch.inference_mode():
      return ref(x_t, ts_t, ctx_t, ids_t).sample

  out_torch = run_torch().numpy()  # warm-up
  t_torch, torch_times = _median_time(run_torch, args.repeats)
  diff = float(np.abs(out_torch.reshape(b * t, 4, h, w).transpose(0, 2, 3, 1) - out_flax).max())
  if not flops:
    flops = 6.265e12 * (t / 14) * (h * w) / (32 * 48)

  record = dict(
      bench='unet_forward', preset=args.preset, frames=t, latent=[h, w], dtype='float32',
      threads=threads, devices=str(jax.devices()[0].platform), flops=flops,
      flax_s=t_flax, torch_s=t_torch, ratio_flax_over_torch=t_flax / t_torch, goal_ratio=0.85,
      flax_times=flax_times, torch_times=torch_times, flax_compile_s=compile_s,
      torch_build_s=build_torch_s, weight_copy_s=copy_s,
      flax_gflops=flops / t_flax / 1e9, torch_gflops=flops / t_torch / 1e9,
      matmul_peak_gflops=peak, flax_fraction_of_peak=flops / t_flax / 1e9 / peak,
      max_abs_diff=diff, output_std=float(out_torch.std()))
  print(json.dumps(record, indent=1))
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(record, f, indent=1)
  print(f'unet_forward {args.preset} {t}x{h}x{w} f32: flax {t_flax:.2f}s vs torch {t_torch:.2f}s '
        f'(ratio {t_flax / t_torch:.2f}, goal <= 0.85), {record["flax_gflops"]:.0f} vs '
        f'{record["torch_gflops"]:.0f} GFLOP/s, matmul peak {peak:.0f}, max|diff| {diff:.2e}')


if __name__ == '__main__':
  main()
