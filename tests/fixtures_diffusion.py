"""Shared helpers for the diffusion tests: randomised tiny Flax models and a tiny GCD batch."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from flax import nnx


def random_tiny(build, cfg, seed: int) -> nnx.Module:
  """`build(cfg, rngs)` as an abstract tree (layers.abstract_module: no eager init, fast) filled by
  `randomise_nnx_`."""
  from gcd_jax.models import layers  # pylint: disable=g-import-not-at-top
  return randomise_nnx_(layers.abstract_module(build, cfg), seed)


def randomise_nnx_(module: nnx.Module, seed: int) -> nnx.Module:
  """Randomises EVERY parameter (zero-init output convs included, so a random network is not the
  identity-ish c_skip·x): kernels N(0, 1/fan_in), norm scales 1 + N(0, 0.2²), biases / embeddings
  N(0, 0.2²), mix factors N(0, 1)."""
  state = nnx.state(module, nnx.Param)
  flat = dict(nnx.to_flat_state(state))
  rng = np.random.default_rng(seed)
  for path, var in flat.items():
    v = var.get_value()
    name = str(path[-1])
    r = rng.standard_normal(v.shape).astype(np.float32)
    if name == 'kernel':
      new = r / np.sqrt(max(1, int(np.prod(v.shape[:-1]))))
    elif name == 'scale':
      new = 1.0 + 0.2 * r
    elif 'mix_factor' in '/'.join(map(str, path)):
      new = r
    else:
      new = 0.2 * r
    var.set_value(jnp.asarray(new, v.dtype))
  return module


def tiny_batch(cfg, b: int, t: int, hw: tuple[int, int], seed: int = 0) -> dict:
  """A channels-last GCD batch (§4.10 keys) of b videos × t frames at pixel size hw."""
  rng = np.random.default_rng(seed)
  n = b * t
  clean = rng.uniform(-1, 1, (n, *hw, 3)).astype(np.float32)
  batch = dict(
      jpg=rng.uniform(-1, 1, (n, *hw, 3)).astype(np.float32),
      cond_frames_without_noise=clean,
      cond_frames=clean + 0.02 * rng.standard_normal(clean.shape).astype(np.float32),
      fps_id=np.repeat(rng.integers(6, 25, b), t).astype(np.int32),
      motion_bucket_id=np.repeat(rng.integers(0, 256, b), t).astype(np.int32),
      cond_aug=np.full(n, 0.02, np.float32),
      scaled_relative_angles=rng.uniform(-1, 1, (n, 3)).astype(np.float32),
      scaled_relative_pose=rng.standard_normal((n, 3, 4)).astype(np.float32),
  )
  return {k: jnp.asarray(v) for k, v in batch.items()}
