"""GCD's camera conditioning embedders (sgm `conditioner.embedders.5`, docs/reference.md §1.3–1.5).

* `SphericalEmbedder` (used by the released Kubric models): per frame (Δazimuth rad, Δelevation rad,
  Δradius m) → 13 periodic features → Linear(13, D). Its output fills y[:, 768:768+D].
* `CameraEmbedder` (the 6-DoF variant, `camera.embedder='pose'`): the relative 3×4 pose flattened
  row-major → Linear(12, D).
Both are trainable and PyTorch-default initialised (docs/reference.md §1.2). sgm keys
`conditioner.embedders.5.proj.{weight,bias}` are our `proj.{kernel,bias}`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from gcd_jax.models import layers
from gcd_jax.models.config import dtype_of

NUM_SPHERICAL_FEATURES = 13


def spherical_features(rel_angles: jax.Array) -> jax.Array:
  """rel_angles [N, 3] = (Δaz rad, Δel rad, Δr m) → [N, 13] float32, in GCD's exact order:
  [cos a, sin a, cos 2a, sin 2a, cos 4a, sin 4a, (same six for elevation), Δr] (docs/reference.md §1.5).

  No azimuth wrapping: the periodic features make ±π identical anyway (docs/reference.md §1.4).
  """
  rel_angles = jnp.asarray(rel_angles, jnp.float32)
  if rel_angles.ndim != 2 or rel_angles.shape[-1] != 3:
    raise ValueError(f'spherical_features: expected [N, 3] (Δazimuth rad, Δelevation rad, Δradius m), '
                     f'got shape {tuple(rel_angles.shape)}')
  feats = []
  for i in range(2):
    a = rel_angles[:, i]
    for mult in (1.0, 2.0, 4.0):
      feats += [jnp.cos(mult * a), jnp.sin(mult * a)]
  feats.append(rel_angles[:, 2])
  return jnp.stack(feats, axis=-1)


class SphericalEmbedder(nnx.Module):
  """rel_angles [N, 3] → [N, embed_dim] = proj(spherical_features(rel_angles))."""

  def __init__(self, embed_dim: int, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
    self.embed_dim = embed_dim
    self.proj = layers.Linear(NUM_SPHERICAL_FEATURES, embed_dim, dtype=dtype, param_dtype=param_dtype,
                              rngs=rngs)

  def __call__(self, rel_angles: jax.Array) -> jax.Array:
    return self.proj(spherical_features(rel_angles)).astype(jnp.float32)


class CameraEmbedder(nnx.Module):
  """6-DoF variant: rel_pose [N, 3, 4] (or [N, 12]) → [N, embed_dim] = proj(flatten row-major)."""

  def __init__(self, embed_dim: int, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
    self.embed_dim = embed_dim
    self.proj = layers.Linear(12, embed_dim, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

  def __call__(self, rel_pose: jax.Array) -> jax.Array:
    rel_pose = jnp.asarray(rel_pose, jnp.float32)
    if rel_pose.shape[1:] not in ((3, 4), (12,)):
      raise ValueError(f'CameraEmbedder: expected [N, 3, 4] relative poses, got {tuple(rel_pose.shape)}')
    return self.proj(rel_pose.reshape(rel_pose.shape[0], 12)).astype(jnp.float32)


def build_camera_embedder(cfg: ml_collections.ConfigDict, rngs: nnx.Rngs
                          ) -> SphericalEmbedder | CameraEmbedder | None:
  """The camera embedder of `cfg.camera` ('spherical' | 'pose' | 'none' → None)."""
  kind = cfg.camera.embedder
  kw = dict(dtype=dtype_of(cfg.dtype), param_dtype=dtype_of(cfg.param_dtype), rngs=rngs)
  if kind == 'spherical':
    return SphericalEmbedder(cfg.camera.embed_dim, **kw)
  if kind == 'pose':
    return CameraEmbedder(cfg.camera.embed_dim, **kw)
  if kind == 'none':
    return None
  raise ValueError(f"camera.embedder={kind!r}; use 'spherical', 'pose' or 'none'")
