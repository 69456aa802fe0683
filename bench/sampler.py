r"""25-step guided EDM sampling: our single jitted program vs a Python loop over diffusers' PyTorch U-Net.

  python bench/sampler.py                      # 'small': tiny U-Net, 14 frames at 32×48 latents (256×384 px)
  python bench/sampler.py --preset tiny        # seconds: 14 frames at 8×8 latents
  python bench/sampler.py --json out.json      # also write the JSON record
  python bench/sampler.py --malloc default     # both sides with glibc's default malloc

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
eager loop under torch.no_grad(); each is the best of --repeats runs. Each side runs ALONE in its own process,
JAX first, then PyTorch, under the same allocator (--malloc): timed in one process, PyTorch right after JAX ran
~10 % slower than alone, which flattered the ratio. Prints one JSON record and a one-line summary with the time
ratio (goal ≤ 0.8).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gcd_jax import hostmem  # pylint: disable=g-import-not-at-top

hostmem.keep_freed_memory()  # as every gcd-jax command; GCD_JAX_MALLOC=default (--malloc default) keeps glibc's

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


def setup(preset: str, steps: int):
  """The random U-Net (flax), the inputs and the schedule, identical in every process (fixed seeds)."""
  b, t, h, w = PRESETS[preset]
  cfg = models.get_config('tiny_svd,eps=diffusers')
  dcfg = diffusion_config()
  dcfg.sampler.num_steps = steps
  unet = random_tiny(build_unet, cfg, 0)  # every parameter random (zero-init convs too)
  rng = np.random.default_rng(0)
  u = cfg.unet
  concat = rng.standard_normal((b, t, 4, h, w)).astype(np.float32)
  ehs = rng.standard_normal((b, 1, u.context_dim)).astype(np.float32)
  ids = np.stack([np.full(b, 12.0), np.full(b, 127.0), np.full(b, 0.02)], 1).astype(np.float32)
  return dict(b=b, t=t, h=h, w=w, cfg=cfg, dcfg=dcfg, unet=unet, concat=concat, ehs=ehs, ids=ids,
              key=jax.random.key(0))


def run_jax(s, repeats: int) -> dict:
  b, t, u = s['b'], s['t'], s['cfg'].unet
  rows = lambda a: a.reshape(b * t, *a.shape[2:]).transpose(0, 2, 3, 1)  # noqa: E731  [B,T,C,h,w] → [B·T,h,w,C]
  y = jnp.concatenate([layers.timestep_embedding(jnp.repeat(s['ids'][:, i], t), u.addition_time_embed_dim)
                       for i in range(3)], -1)
  cond = dict(concat=jnp.asarray(rows(s['concat'])), crossattn=jnp.repeat(jnp.asarray(s['ehs']), t, axis=0),
              vector=y)
  uncond = dict(cond, concat=jnp.zeros_like(cond['concat']), crossattn=jnp.zeros_like(cond['crossattn']))
  graph, state = nnx.split(s['unet'])
  dcfg = s['dcfg']

  @jax.jit
  def program(state, cond, uncond, key):
    return sample_latents(network_fn_from_unet(nnx.merge(graph, state)), cond, uncond, key, dcfg, t)

  t0 = time.perf_counter()
  z = jax.block_until_ready(program(state, cond, uncond, s['key']))
  first = time.perf_counter() - t0
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    z = jax.block_until_ready(program(state, cond, uncond, s['key']))
    times.append(time.perf_counter() - t0)
  return dict(times=times, first_call=first, latents=np.asarray(z))


def run_torch(s, repeats: int) -> dict:
  from diffusers import UNetSpatioTemporalConditionModel  # pylint: disable=g-import-not-at-top
  b, t, h, w, dcfg = s['b'], s['t'], s['h'], s['w'], s['dcfg']
  tm = UNetSpatioTemporalConditionModel(**diffusers_unet_config(s['cfg'])).eval()
  missing, unexpected = tm.load_state_dict({k: torch.from_numpy(np.array(v, copy=True))
                                            for k, v in torch_state_dict(s['unet']).items()}, strict=True)
  assert not missing and not unexpected
  # The same initial noise as sample_latents: ε·√(1+σ₀²), drawn from the same key.
  sigmas = edm_discretization(dcfg.sampler.num_steps, dcfg.sampler.sigma_min, dcfg.sampler.sigma_max,
                              dcfg.sampler.rho)
  k_init, _ = jax.random.split(s['key'])
  x0 = np.asarray(jax.random.normal(k_init, (b * t, h, w, 4)) * np.sqrt(1.0 + np.float32(sigmas[0]) ** 2))
  x0_t = x0.reshape(b, t, h, w, 4).transpose(0, 1, 4, 2, 3).copy()
  scales = guidance_scales(t, dcfg.guider.min_scale, dcfg.guider.max_scale)
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    zt = torch_sample(tm, x0_t, s['concat'], s['ehs'], s['ids'], sigmas, scales, b, t)
    times.append(time.perf_counter() - t0)
  return dict(times=times, latents=zt.reshape(b * t, 4, h, w).transpose(0, 2, 3, 1))


def _child(args) -> int:
  """One side alone in this process: times in JSON on stdout, latents to --latents."""
  s = setup(args.preset, args.steps)
  out = run_jax(s, args.repeats) if args.side == 'jax' else run_torch(s, args.repeats)
  np.save(args.latents, out.pop('latents'))
  print('RESULT ' + json.dumps(dict(out, peak_rss_mb=_peak_rss_mb())))
  return 0


def _peak_rss_mb() -> float:
  import resource  # pylint: disable=g-import-not-at-top
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _run_side(args, side: str, tmp: str) -> tuple[dict, np.ndarray]:
  import subprocess  # pylint: disable=g-import-not-at-top
  latents = os.path.join(tmp, f'{side}.npy')
  cmd = [sys.executable, os.path.abspath(__file__), '--side', side, '--preset', args.preset, '--steps',
         str(args.steps), '--repeats', str(args.repeats), '--latents', latents]
  r = subprocess.run(cmd, capture_output=True, text=True, env=_env(args), check=False)
  if r.returncode != 0:
    raise SystemExit(f'bench/sampler.py: the {side} process failed:\n{r.stderr[-3000:]}')
  line = next(l for l in r.stdout.splitlines() if l.startswith('RESULT '))
  return json.loads(line[len('RESULT '):]), np.load(latents)


def _env(args) -> dict:
  """Both children get the same allocator: the project's (gcd_jax/hostmem.py) or glibc's defaults."""
  return dict(os.environ, GCD_JAX_MALLOC=args.malloc)


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument('--preset', choices=sorted(PRESETS), default='small')
  ap.add_argument('--steps', type=int, default=25)
  ap.add_argument('--repeats', type=int, default=3)
  ap.add_argument('--malloc', choices=('keep', 'default'), default='keep',
                  help="malloc of both sides: 'keep' (the project's, gcd_jax/hostmem.py) or glibc's 'default'")
  ap.add_argument('--json', default=None)
  ap.add_argument('--side', choices=('jax', 'torch'), default=None, help=argparse.SUPPRESS)  # child process
  ap.add_argument('--latents', default=None, help=argparse.SUPPRESS)
  args = ap.parse_args(argv)
  if args.side:
    return _child(args)
  import tempfile  # pylint: disable=g-import-not-at-top
  b, t, h, w = PRESETS[args.preset]
  with tempfile.TemporaryDirectory() as tmp:
    jx, zj = _run_side(args, 'jax', tmp)      # each side alone, one after the other, same allocator
    th, zt = _run_side(args, 'torch', tmp)
  diff = float(np.abs(zj - zt).max())
  rec = dict(
      bench='sampler', preset=args.preset, videos=b, frames=t, latent_hw=[h, w], steps=args.steps,
      guidance=[1.0, 1.5], unet='tiny_svd,eps=diffusers', method='separate processes, JAX then PyTorch',
      malloc=args.malloc, jax_seconds=min(jx['times']), jax_first_call_seconds=jx['first_call'],
      torch_seconds=min(th['times']), jax_all=jx['times'], torch_all=th['times'],
      ratio=min(jx['times']) / min(th['times']), jax_peak_rss_mb=jx['peak_rss_mb'],
      torch_peak_rss_mb=th['peak_rss_mb'], max_abs_diff_latents=diff, latent_std=float(np.std(zt)),
      jax_backend=jax.default_backend(), torch_threads=torch.get_num_threads(), cpu_count=os.cpu_count(),
      load_avg=list(os.getloadavg()))
  print(json.dumps(rec))
  if args.json:
    tmp = args.json + '.tmp'
    with open(tmp, 'w') as f:
      json.dump(rec, f, indent=1)
    os.replace(tmp, args.json)
  print(f"sampler {args.preset} ({b}×{t} frames, {h}×{w} latents, {args.steps} steps, CFG; separate processes, "
        f"malloc {args.malloc}): JAX {rec['jax_seconds']:.2f} s (first call {rec['jax_first_call_seconds']:.1f} s) "
        f"vs PyTorch {rec['torch_seconds']:.2f} s → ratio {rec['ratio']:.2f} (goal ≤ 0.8); max |Δ latents| "
        f"{diff:.2e} (std {rec['latent_std']:.2f})")
  return 0


if __name__ == '__main__':
  sys.exit(main())
