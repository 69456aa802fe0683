"""Preconditioned x₀-denoiser D(x; σ) (docs/reference.md §2.1: sgm `Denoiser` + `VScalingWithEDMcNoise`).

  D(x; σ) = c_skip·x + c_out·F(concat[c_in·x, cond['concat']], c_noise, cond['crossattn'], cond['vector'])

The network is abstracted (team contract) as

  network_fn(x_in [B·T, h, w, 8], c_noise [B·T], context [B·T, L, C], y [B·T, W], num_frames) -> F [B·T, h, w, 4]

`cond` is a dict with 'concat' [B·T, h, w, 4], 'crossattn' [B·T, L, C] and 'vector' [B·T, W] — the FULL
`y` (camera embedding already appended, see `conditioner.append_camera`).
"""

from __future__ import annotations

from typing import Callable, Mapping

import jax
import jax.numpy as jnp

NetworkFn = Callable[[jax.Array, jax.Array, jax.Array, jax.Array, int], jax.Array]


def vscaling_edm_cnoise(sigma: jax.Array, sigma_data: float = 1.0
                        ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """VScalingWithEDMcNoise: sigma [N] → (c_skip, c_out, c_in, c_noise), each [N] float32.

  c_skip = σd²/(σ²+σd²), c_out = −σ·σd/√(σ²+σd²) (negative: v-prediction), c_in = 1/√(σ²+σd²),
  c_noise = ¼·ln σ. With σd = 1 these are exactly the sgm formulas of §2.1.
  """
  sigma = jnp.asarray(sigma, jnp.float32)
  sd2 = sigma_data ** 2
  denom = sigma ** 2 + sd2
  c_skip = sd2 / denom
  c_out = -sigma * sigma_data * jax.lax.rsqrt(denom)
  c_in = jax.lax.rsqrt(denom)
  c_noise = 0.25 * jnp.log(sigma)
  return c_skip, c_out, c_in, c_noise


def _rows(c: jax.Array, ndim: int) -> jax.Array:
  return c.reshape(c.shape + (1,) * (ndim - 1))


def network_input(x: jax.Array, sigma: jax.Array, concat: jax.Array, sigma_data: float = 1.0) -> jax.Array:
  """[c_in·x, concat] along channels: noisy latent FIRST, conditioning latent second and NOT scaled by
  c_in (sgm `OpenAIWrapper`, §1.2). x, concat: [B·T, h, w, 4]; sigma [B·T] → [B·T, h, w, 8]."""
  _, _, c_in, _ = vscaling_edm_cnoise(sigma, sigma_data)
  return jnp.concatenate([x * _rows(c_in, x.ndim), concat.astype(x.dtype)], axis=-1)


def denoise(network_fn: NetworkFn, x: jax.Array, sigma: jax.Array, cond: Mapping[str, jax.Array],
            num_frames: int, sigma_data: float = 1.0) -> jax.Array:
  """x [B·T, h, w, 4] noisy latents, sigma [B·T] (per row) → x̂₀ [B·T, h, w, 4] float32."""
  if sigma.shape != x.shape[:1]:
    raise ValueError(f'denoise: sigma must have one value per row, shape {x.shape[:1]}, got {sigma.shape}')
  x = x.astype(jnp.float32)
  c_skip, c_out, _, c_noise = vscaling_edm_cnoise(sigma, sigma_data)
  x_in = network_input(x, sigma, cond['concat'], sigma_data)
  f = network_fn(x_in, c_noise, cond['crossattn'], cond['vector'], num_frames).astype(jnp.float32)
  return _rows(c_skip, x.ndim) * x + _rows(c_out, x.ndim) * f


def network_fn_from_unet(unet) -> NetworkFn:
  """Adapts a `VideoUNet` (or anything with its call signature) to the contract's `network_fn`."""
  def fn(x_in, c_noise, context, y, num_frames):
    return unet(x_in, c_noise, context, y, num_frames=num_frames)
  return fn
