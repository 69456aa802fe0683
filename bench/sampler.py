r"""25-step guided EDM sampling: our single jitted program vs a Python loop over diffusers' PyTorch U-Net.

  python bench/sampler.py                      # 'small': tiny U-Net, 14 frames at 32×48 latents (256×384 px)
  python bench/sampler.py --preset tiny        # seconds: 14 frames at 8×8 latents
  python bench/sampler.py --json out.json      # also write the JSON record

Same run, same weights, same inputs: a random U-Net of configs/models.py `tiny_svd,eps=diffusers` (the
diffusers ResBlock eps layout; no GCD camera path — diffusers' UNetSpatioTemporalConditionModel has no
`aux_label_emb`) is copied flax → torch with `torch_state_dict`. Both sides run the identical algorithm
(docs/reference.md §2.4): EDM σ schedule (700 → 0.002, ρ 7, 25 steps), x = ε·√(1+σ₀²), per step one U-Net call
on the doubled batch (uncond: zero crossattn/concat, §1.7) under VScalingWithEDMcNoise preconditioning,
linear per-frame guidance 1.0 → 1.5, Euler update, x̂₀ at the last step. Conditioning is per-video
(diffusers repeats `encoder_hidden_states` over frames and takes `added_time_ids` [B, 3]), so our per-row
inputs are the per-video ones repeated. The VAE decode is not part of the timing (it is the same on
both sides and not in diffusers' U-Net loop).

JAX time = steady-state call of the compiled program (compile time reported separately); PyTorch time =
eager loop under torch.no_grad(); each is the best of --repeats runs, interleaved (the machine is shared).
Prints one JSON record and a one-line summary with the time ratio (goal ≤ 0.5).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx

from gcd_jax.models import presets as models
from gcd_jax.convert.diffusers import diffusers_unet_config
from gcd_jax.convert.torch_layout import torch_state_dict
from gcd_jax.diffusion.config import diffusion_config
from gcd_jax.diffusion.denoiser import network_fn_from_unet
from gcd_jax.diffusion.discretization import edm_discretization, guidance_scales
from gcd_jax.diffusion.sampler import sample_latents
from gcd_jax.models import layers
from gcd_jax.models.unet import build_unet
from tests.fixtures_diffusion import random_tiny

PRESETS = {'small': (1, 14, 32, 48), 'tiny': (1, 14, 8, 8)}  # B, T, h, w (latents)


def torch_sample(tm, x0, concat, ehs, ids, sigmas, scales, b, t):
  """Reference loop: diffusers U-Net, channels-first [B, T, C, h, w], cond/uncond concatenated [uc; c]."""
  x = torch.from_numpy(x0)
  concat = torch.from_numpy(concat)
  concat2 = torch.cat([torch.zeros_like(concat), concat])
  ehs = torch.from_numpy(ehs)
  ehs2 = torch.cat([torch.zeros_like(ehs), ehs])
  ids2 = torch.from_numpy(np.concatenate([ids, ids]))
  s = torch.from_numpy(scales).view(1, t, 1, 1, 1)
  n = len(sigmas) - 1
  with torch.no_grad():
    for i in range(n):
      sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
      c_skip, c_out, c_in = 1 / (sigma ** 2 + 1), -sigma / (sigma ** 2 + 1) ** 0.5, 1 / (sigma ** 2 + 1) ** 0.5
      c_noise = 0.25 * np.log(sigma)
      x2 = torch.cat([x, x])
      inp = torch.cat([x2 * c_in, concat2], dim=2)
      f = tm(inp, torch.full((2 * b,), c_noise, dtype=torch.float32), ehs2, ids2).sample
      d2 = c_skip * x2 + c_out * f
      du, dc = d2[:b], d2[b:]
      den = du + s * (dc - du)
      x = den if i == n - 1 else x + (sigma_next - sigma) * (x - den) / sigma
  return x.numpy()


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument('--preset', choices=sorted(PRESETS), default='small')
  ap.add_argument('--steps', type=int, default=25)
  ap.add_argument('--repeats', type=int, default=3)
  ap.add_argument('--json', default=None)
  args = ap.parse_args(argv)
  b, t, h, w = PRESETS[args.preset]
  cfg = models.get_config('tiny_svd,eps=diffusers')
  dcfg = diffusion_config()
  dcfg.sampler.num_steps = args.steps

  unet = random_tiny(build_unet, cfg, 0)  # every parameter random (zero-init convs too)
  from diffusers import UNetSpatioTemporalConditionModel  # pylint: disable=g-import-not-at-top
  tm = UNetSpatioTemporalConditionModel(**diffusers_unet_config(cfg)).eval()
  missing, unexpected = tm.load_state_dict({k: torch.from_numpy(np.array(v, copy=True))
                                            for k, v in torch_state_dict(unet).items()}, strict=True)
  assert not missing and not unexpected

  rng = np.random.default_rng(0)
  u = cfg.unet
  concat = rng.standard_normal((b, t, 4, h, w)).astype(np.float32)
  ehs = rng.standard_normal((b, 1, u.context_dim)).astype(np.float32)
  ids = np.stack([np.full(b, 12.0), np.full(b, 127.0), np.full(b, 0.02)], 1).astype(np.float32)
  rows = lambda a: a.reshape(b * t, *a.shape[2:]).transpose(0, 2, 3, 1)  # [B,T,C,h,w] → [B·T,h,w,C]
  y = jnp.concatenate([layers.timestep_embedding(jnp.repeat(ids[:, i], t), u.addition_time_embed_dim)
                       for i in range(3)], -1)
  cond = dict(concat=jnp.asarray(rows(concat)), crossattn=jnp.repeat(jnp.asarray(ehs), t, axis=0), vector=y)
  uncond = dict(cond, concat=jnp.zeros_like(cond['concat']), crossattn=jnp.zeros_like(cond['crossattn']))
  key = jax.random.key(0)

  graph, state = nnx.split(unet)

  @jax.jit
  def program(state, cond, uncond, key):
    return sample_latents(network_fn_from_unet(nnx.merge(graph, state)), cond, uncond, key, dcfg, t)

  t0 = time.perf_counter()
  z = jax.block_until_ready(program(state, cond, uncond, key))
  first_call = time.perf_counter() - t0
  # The same initial noise for torch: ε·√(1+σ₀²) drawn exactly as sample_latents does.
  sigmas = edm_discretization(args.steps, dcfg.sampler.sigma_min, dcfg.sampler.sigma_max, dcfg.sampler.rho)
  k_init, _ = jax.random.split(key)
  x0 = np.asarray(jax.random.normal(k_init, (b * t, h, w, 4)) * np.sqrt(1.0 + np.float32(sigmas[0]) ** 2))
  x0_t = x0.reshape(b, t, h, w, 4).transpose(0, 1, 4, 2, 3).copy()
  scales = guidance_scales(t, dcfg.guider.min_scale, dcfg.guider.max_scale)

  jax_times, torch_times = [], []
  for _ in range(args.repeats):
    t0 = time.perf_counter()
    z = jax.block_until_ready(program(state, cond, uncond, key))
    jax_times.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    zt = torch_sample(tm, x0_t, concat, ehs, ids, sigmas, scales, b, t)
    torch_times.append(time.perf_counter() - t0)
  zt_rows = zt.reshape(b * t, 4, h, w).transpose(0, 2, 3, 1)
  diff = float(np.abs(np.asarray(z) - zt_rows).max())
  rec = dict(
      bench='sampler', preset=args.preset, videos=b, frames=t, latent_hw=[h, w], steps=args.steps,
      guidance=[dcfg.guider.min_scale, dcfg.guider.max_scale], unet='tiny_svd,eps=diffusers',
      jax_seconds=min(jax_times), jax_first_call_seconds=first_call, torch_seconds=min(torch_times),
      jax_all=jax_times, torch_all=torch_times, ratio=min(jax_times) / min(torch_times),
      max_abs_diff_latents=diff, latent_std=float(np.std(zt_rows)), jax_backend=jax.default_backend(),
      torch_threads=torch.get_num_threads(), cpu_count=os.cpu_count(),
      load_avg=list(os.getloadavg()))
  print(json.dumps(rec))
  if args.json:
    tmp = args.json + '.tmp'
    with open(tmp, 'w') as f:
      json.dump(rec, f, indent=1)
    os.replace(tmp, args.json)
  print(f"sampler {args.preset} ({b}×{t} frames, {h}×{w} latents, {args.steps} steps, CFG): JAX "
        f"{rec['jax_seconds']:.2f} s (first call {first_call:.1f} s) vs PyTorch {rec['torch_seconds']:.2f} s "
        f"→ ratio {rec['ratio']:.2f} (goal ≤ 0.5); max |Δ latents| {diff:.2e} (std {rec['latent_std']:.2f})")
  return 0


if __name__ == '__main__':
  sys.exit(main())
