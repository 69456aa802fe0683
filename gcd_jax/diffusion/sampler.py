"""EDM Euler sampler with GCD's linear per-frame prediction guidance (docs/reference.md §2.4, §1.7).

Layers, from pure math to the compiled program:

* `guided_denoise(network_fn, x, sigma, cond, uncond, scales, num_frames)`: ONE network call on the
  doubled batch (uncond and cond branch of every video), then D = D_u + s_t·(D_c − D_u) per frame.
* `sample_latents(network_fn, cond, uncond, key, cfg, num_frames)`: the whole loop, traceable —
  x = N(0, I)·√(1 + σ₀²); for i = 0..N−1: (churn), x̂₀ = D(x; σ̂), x ← x + (σ_{i+1} − σ̂)(x − x̂₀)/σ̂, the
  last step returning x̂₀. `lax.fori_loop` (one network call site in the program) or, with
  `python_loop=True`, a Python loop over the same step function for step-by-step debugging.
* `make_sample_fn(model_cfg, cfg, num_frames=..., mesh=...)` → `sample_fn(network, vae, cond, key)`:
  one `jax.jit` program = camera embedding + all steps + guidance + VAE decode + clamp to [0, 1], videos
  split over the mesh's data axis. Compiled once per input shapes (`sample_fn.trace_count`).

`cond` / `uncond` for the pure functions hold the FULL vector (camera appended); `make_sample_fn` takes
the conditioner's output (raw 'camera') and appends the network's camera embedding itself.
"""

from __future__ import annotations

import functools
import math
from typing import Mapping

import einops
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from gcd_jax.diffusion.conditioner import append_camera, unconditional
from gcd_jax.diffusion.denoiser import NetworkFn, denoise, network_fn_from_unet
from gcd_jax.diffusion.discretization import edm_discretization, guidance_scales
from gcd_jax.models import attention

COND_KEYS = ('concat', 'crossattn', 'vector')


def linear_prediction_guider(x0_uncond: jax.Array, x0_cond: jax.Array, scales: jax.Array,
                             num_frames: int) -> jax.Array:
  """D = D_u + s_t·(D_c − D_u), s_t = scales[t] for frame t of every video (LinearPredictionGuider).

  x0_*: [B·T, h, w, C]; scales: [T] (`guidance_scales`) → [B·T, h, w, C]."""
  n = x0_cond.shape[0]
  s = jnp.tile(jnp.asarray(scales, jnp.float32), n // num_frames)
  s = s.reshape((n,) + (1,) * (x0_cond.ndim - 1))
  return x0_uncond + s * (x0_cond - x0_uncond)


def double_batch(uncond: Mapping[str, jax.Array], cond: Mapping[str, jax.Array], num_frames: int) -> dict:
  """Both branches in one batch: rows ordered (video, branch [uncond, cond], frame).

  The reference concatenates [uc; c] over the whole batch; we interleave per video so that a video's two
  branches live on the same device when the rows are split over a mesh (no cross-device concat). Every
  row block of T frames is still one whole video, so the network sees exactly the reference's inputs
  (row order between videos is immaterial; §6 item 24)."""
  out = {}
  for k in COND_KEYS:
    both = jnp.stack([uncond[k], cond[k]])  # [branch, B·T, ...]
    out[k] = einops.rearrange(both, 'two (b t) ... -> (b two t) ...', t=num_frames)
  return out


def guided_denoise(network_fn: NetworkFn, x: jax.Array, sigma: jax.Array, cond2: Mapping[str, jax.Array],
                   scales: jax.Array | None, num_frames: int, sigma_data: float = 1.0) -> jax.Array:
  """x [B·T, h, w, 4], sigma scalar → guided x̂₀. cond2: `double_batch(uncond, cond)` (scales given) or the
  plain cond (scales=None: no guidance, one branch)."""
  n = x.shape[0]
  if scales is None:
    return denoise(network_fn, x, jnp.full((n,), sigma, jnp.float32), cond2, num_frames, sigma_data)
  b = n // num_frames
  x2 = jnp.broadcast_to(x.reshape(b, 1, num_frames, *x.shape[1:]), (b, 2, num_frames, *x.shape[1:]))
  x2 = x2.reshape(2 * n, *x.shape[1:])
  d2 = denoise(network_fn, x2, jnp.full((2 * n,), sigma, jnp.float32), cond2, num_frames, sigma_data)
  d2 = d2.reshape(b, 2, num_frames, *x.shape[1:])
  return linear_prediction_guider(d2[:, 0].reshape(x.shape), d2[:, 1].reshape(x.shape), scales, num_frames)


def churn_gammas(sigmas: np.ndarray, s_churn: float, s_tmin: float, s_tmax: float) -> np.ndarray:
  """γ_i = min(s_churn/N, √2 − 1) where s_tmin ≤ σ_i ≤ s_tmax else 0 (sgm EulerEDMSampler; N = len(σ)−1)."""
  n = len(sigmas) - 1
  g = min(s_churn / n, math.sqrt(2.0) - 1.0)
  s = sigmas[:-1]
  return np.where((s >= s_tmin) & (s <= s_tmax), g, 0.0).astype(np.float32)


def _step(i, x, key, network_fn, cond2, scales, sigmas, gammas, cfg, num_frames, last):
  """One Euler(-churn) step from σ_i to σ_{i+1}; returns x̂₀ at the last step."""
  sc = cfg.sampler
  sigma, sigma_next, gamma = sigmas[i], sigmas[i + 1], gammas[i]
  sigma_hat = sigma * (gamma + 1.0)
  if sc.s_churn > 0:
    eps = jax.random.normal(jax.random.fold_in(key, i), x.shape, jnp.float32) * sc.s_noise
    x = x + eps * jnp.sqrt(jnp.maximum(sigma_hat ** 2 - sigma ** 2, 0.0))
  x0 = guided_denoise(network_fn, x, sigma_hat, cond2, scales, num_frames, cfg.sigma_data)
  x_next = x + (sigma_next - sigma_hat) * (x - x0) / sigma_hat
  # The last step (σ → 0) is algebraically x̂₀; return it exactly (§2.4).
  return jnp.where(i == last, x0, x_next)


def per_video_keys(key) -> bool:
  """True for raw per-video keys (uint32 [B, 2]); False for one PRNG key (typed, or raw uint32 [2])."""
  a = key if hasattr(key, 'dtype') else np.asarray(key)
  return not jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key) and a.ndim == 2


def initial_noise(key, shape: tuple, num_frames: int) -> jax.Array:
  """Standard-normal x_T of `shape` [B·T, h, w, C]. key: one PRNG key for the whole batch, or per-video
  keys uint32 [B, 2], each drawing its own video's [T, h, w, C]: a video's sample then does not depend on
  which other videos share its batch (evaluation, `gcd-jax sample`)."""
  if not per_video_keys(key):
    return jax.random.normal(key, shape, jnp.float32)
  keys = jnp.asarray(key, jnp.uint32)
  if keys.shape[0] * num_frames != shape[0]:
    raise ValueError(f'{keys.shape[0]} per-video keys for {shape[0]} rows of {num_frames}-frame videos')
  noise = jax.vmap(lambda k: jax.random.normal(jax.random.wrap_key_data(k), (num_frames,) + tuple(shape[1:]),
                                               jnp.float32))(keys)
  return einops.rearrange(noise, 'b t ... -> (b t) ...')


def _prepare(cond, uncond, key, cfg, num_frames, constrain):
  """→ (x_init, cond2, scales, sigmas, gammas, churn key) for `sample_latents` / the stepwise loop."""
  sc = cfg.sampler
  sigmas_np = edm_discretization(sc.num_steps, sc.sigma_min, sc.sigma_max, sc.rho)
  gammas_np = churn_gammas(sigmas_np, sc.s_churn, sc.s_tmin, sc.s_tmax)
  shape = cond['concat'].shape
  if shape[0] % num_frames:
    raise ValueError(f'sample_latents: {shape[0]} rows are not whole videos of num_frames={num_frames}')
  if uncond is None:
    cond2, scales = {k: cond[k] for k in COND_KEYS}, None
  else:
    cond2 = double_batch(uncond, cond, num_frames)
    scales = jnp.asarray(guidance_scales(num_frames, cfg.guider.min_scale, cfg.guider.max_scale))
  cond2 = {k: constrain(v) for k, v in cond2.items()}
  if per_video_keys(key):
    noise = initial_noise(key, shape, num_frames)
    k_churn = jax.random.wrap_key_data(jnp.asarray(key, jnp.uint32)[0])  # churn: off in GCD's sampler (§2.4)
  else:
    k_init, k_churn = jax.random.split(key)
    noise = initial_noise(k_init, shape, num_frames)
  sigmas, gammas = jnp.asarray(sigmas_np), jnp.asarray(gammas_np)
  x = constrain(noise * jnp.sqrt(1.0 + sigmas[0] ** 2))
  return x, cond2, scales, sigmas, gammas, k_churn


def sample_latents(network_fn: NetworkFn, cond: Mapping[str, jax.Array],
                   uncond: Mapping[str, jax.Array] | None, key: jax.Array, cfg: ml_collections.ConfigDict,
                   num_frames: int, *, python_loop: bool = False, constrain=None) -> jax.Array:
  """The EDM Euler sampling loop (§2.4). cond/uncond: {'concat' [B·T, h, w, 4], 'crossattn' [B·T, L, C],
  'vector' [B·T, W] (full y)}; uncond=None disables guidance. cfg: `diffusion_config()`. key: PRNG key
  (initial noise and churn noise), or per-video keys uint32 [B, 2] (`initial_noise`). constrain: optional fn applied to row-major arrays (sharding).
  python_loop: a Python `for` over the same step (eager unless called under jit).
  → x̂₀ latents [B·T, h, w, 4] float32 (still × scaling_factor)."""
  constrain = constrain or (lambda a: a)
  x, cond2, scales, sigmas, gammas, k_churn = _prepare(cond, uncond, key, cfg, num_frames, constrain)
  last = cfg.sampler.num_steps - 1
  step = functools.partial(_step, key=k_churn, network_fn=network_fn, cond2=cond2, scales=scales,
                           sigmas=sigmas, gammas=gammas, cfg=cfg, num_frames=num_frames, last=last)
  if python_loop:
    for i in range(cfg.sampler.num_steps):
      x = constrain(step(jnp.int32(i), x))
    return x
  return jax.lax.fori_loop(0, cfg.sampler.num_steps, lambda i, x: constrain(step(i, x)), x)


def decode_latents(vae, z: jax.Array, num_frames: int, chunk_size: int | None) -> jax.Array:
  """z [B·T, h, w, 4] (× scaling_factor) → video [B·T, H, W, 3] = clamp((decode(z/sf) + 1)/2, 0, 1)."""
  x = vae.decode(z / vae.scaling_factor, num_frames=num_frames, chunk_size=chunk_size)
  return jnp.clip((x + 1.0) / 2.0, 0.0, 1.0)


def make_sample_fn(cfg: ml_collections.ConfigDict, *, num_frames: int, mesh: jax.sharding.Mesh | None = None,
                   data_axis: str = 'data', guidance: bool = True, decode: bool = True,
                   python_loop: bool = False, callback=None, attention_impl: str = 'auto'):
  """Builds `sample_fn(network, vae, cond, key) -> videos [B·T, H, W, 3] in [0, 1]` (or latents with
  decode=False; `vae` may then be None).

  network: `GCDNetwork`; vae: `AutoencoderKLTemporalDecoder`; cond: the `Conditioner` output WITHOUT
  dropout ({'crossattn', 'concat', 'vector', 'camera'}); the unconditional branch is derived from it
  (zeros for crossattn/concat, §1.7). key: PRNG key → same key, same videos (also across mesh sizes:
  threefry is partitionable); or per-video keys uint32 [B, 2] → each video's noise from its own key. cfg: `diffusion_config()` (sampler, guider, decode.chunk_size).

  One jax.jit program (camera embedding, every step, guidance, decode). With `mesh`, the B·T rows are
  split over `data_axis` (B must be a multiple of its size, so every device holds whole videos);
  parameters keep the placement they have. `sample_fn.trace_count` counts traces (1 per input shape).

  python_loop=True (debugging): a Python loop over ONE jitted Euler step (parameters passed as
  arguments, compiled once), `callback(i, x_after_step_i)` called after every step; same result as the
  single program (same keys, same arithmetic).
  """
  row_sharding = None if mesh is None else NamedSharding(mesh, P(data_axis))

  def constrain(a):
    return a if row_sharding is None else jax.lax.with_sharding_constraint(a, row_sharding)

  def full_cond(net, cond):
    c = append_camera(cond, net.embed_camera(cond['camera']))
    return c, (unconditional(c) if guidance else None)

  def decode_program(vae_graph, vae_state, z):
    vae = nnx.merge(vae_graph, vae_state)
    return constrain(decode_latents(vae, z, num_frames, cfg.decode.chunk_size))

  def program(net_graph, net_state, vae_graph, vae_state, cond, key):
    sample_fn.trace_count += 1  # Python side effect: runs once per trace, not per call
    net = nnx.merge(net_graph, net_state)
    c, uc = full_cond(net, cond)
    z = sample_latents(network_fn_from_unet(net.unet), c, uc, key, cfg, num_frames, constrain=constrain)
    return decode_program(vae_graph, vae_state, z) if decode else z

  def prepare_program(net_graph, net_state, cond, key):
    c, uc = full_cond(nnx.merge(net_graph, net_state), cond)
    return _prepare(c, uc, key, cfg, num_frames, constrain)

  def step_program(net_graph, net_state, i, x, cond2, scales, sigmas, gammas, k_churn):
    sample_fn.trace_count += 1
    net = nnx.merge(net_graph, net_state)
    return constrain(_step(i, x, k_churn, network_fn_from_unet(net.unet), cond2, scales, sigmas, gammas,
                           cfg, num_frames, cfg.sampler.num_steps - 1))

  # The attention implementation (the model config's `attention`), traced with the mesh: a Pallas kernel
  # then runs per device over its rows (gcd_jax/models/attention.py).
  backend = attention.Backend(impl=attention_impl, mesh=mesh, row_axes=(data_axis,) if mesh is not None else ())
  jit_program = jax.jit(attention.with_backend(program, backend), static_argnums=(0, 2))
  jit_prepare = jax.jit(attention.with_backend(prepare_program, backend), static_argnums=(0,))
  jit_step = jax.jit(attention.with_backend(step_program, backend), static_argnums=(0,))
  jit_decode = jax.jit(attention.with_backend(decode_program, backend), static_argnums=(0,))

  def sample_fn(network, vae, cond, key):
    n = cond['concat'].shape[0]
    if n % num_frames:
      raise ValueError(f'sample_fn: {n} rows are not whole videos of num_frames={num_frames}')
    if mesh is not None and (n // num_frames) % mesh.shape[data_axis]:
      raise ValueError(f'sample_fn: {n // num_frames} videos cannot be split evenly over the '
                       f'{mesh.shape[data_axis]} devices of mesh axis {data_axis!r}; pass a multiple')
    if decode and vae is None:
      raise ValueError('sample_fn: decode=True needs the VAE (or build with decode=False for latents)')
    net_graph, net_state = nnx.split(network)
    vae_graph, vae_state = nnx.split(vae) if decode else (None, None)
    cond = {k: cond[k] for k in (*COND_KEYS, 'camera')}
    if row_sharding is not None:
      cond = jax.device_put(cond, row_sharding)
    if not python_loop:
      return jit_program(net_graph, net_state, vae_graph, vae_state, cond, key)
    x, cond2, scales, sigmas, gammas, k_churn = jit_prepare(net_graph, net_state, cond, key)
    for i in range(cfg.sampler.num_steps):
      x = jit_step(net_graph, net_state, jnp.int32(i), x, cond2, scales, sigmas, gammas, k_churn)
      if callback is not None:
        callback(i, x)
    return jit_decode(vae_graph, vae_state, x) if decode else x

  sample_fn.trace_count = 0
  return sample_fn
