"""Training noise levels (docs/reference.md §2.2: sgm `EDMSampling` + GCD's `harmonize_sigmas`)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def sample_training_sigmas(key: jax.Array, num_rows: int, p_mean: float = 1.0, p_std: float = 1.6
                           ) -> jax.Array:
  """ln σ ~ N(p_mean, p_std²), one draw per row → [num_rows] float32."""
  return jnp.exp(p_mean + p_std * jax.random.normal(key, (num_rows,), jnp.float32))


def harmonize_sigmas(sigmas: jax.Array, num_frames: int) -> jax.Array:
  """Every frame takes the σ of frame 0 of its video (one noise level per video, §2.2, §6 item 5).

  sigmas [B·T] (rows, frames inner) → [B·T].
  """
  n = sigmas.shape[0]
  if n % num_frames:
    raise ValueError(f'harmonize_sigmas: {n} rows are not whole videos of num_frames={num_frames}')
  per_video = sigmas.reshape(n // num_frames, num_frames)[:, :1]
  return jnp.broadcast_to(per_video, (n // num_frames, num_frames)).reshape(n)


def training_sigmas(key: jax.Array, num_rows: int, num_frames: int, cfg) -> jax.Array:
  """`cfg.sigma_sampling` of `diffusion_config()`: draw B·T sigmas, harmonize if configured → [B·T]."""
  s = cfg.sigma_sampling
  sig = sample_training_sigmas(key, num_rows, s.p_mean, s.p_std)
  return harmonize_sigmas(sig, num_frames) if s.harmonize else sig
