"""The trainable GCD network: the VideoUNet plus the camera embedder (docs/reference.md §1.5, §1.8).

`GCDNetwork.__call__(x, c_noise, context, vector_without_camera, camera, *, num_frames, ...)` is a
convenience that appends the camera embedding to the SVD vector (y = [fps | motion | cond_aug | camera],
the camera last as `GeneralConditioner` orders it) and runs the U-Net. The diffusion code that wants the
contract's `network_fn(x, c_noise, context, y, num_frames)` builds y with `embed_camera` itself.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from gcd_jax.models.camera import build_camera_embedder
from gcd_jax.models.unet import VideoUNet


class GCDNetwork(nnx.Module):
  """`.unet` (VideoUNet) + `.camera_embedder` (SphericalEmbedder / CameraEmbedder / None)."""

  def __init__(self, cfg: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
    self.unet = VideoUNet(cfg, rngs=rngs)
    self.camera_embedder = build_camera_embedder(cfg, rngs)

  def embed_camera(self, batch_camera: jax.Array) -> jax.Array:
    """batch_camera: [B·T, 3] relative spherical angles ('spherical'), [B·T, 3, 4] relative poses
    ('pose'), or anything with B·T rows ('none') → [B·T, D] float32 (D = 0 without a camera)."""
    if self.camera_embedder is None:
      return jnp.zeros((batch_camera.shape[0], 0), jnp.float32)
    return self.camera_embedder(batch_camera)

  def __call__(self, x: jax.Array, c_noise: jax.Array, context: jax.Array,
               vector_without_camera: jax.Array, camera: jax.Array, *, num_frames: int,
               image_only_indicator: jax.Array | None = None) -> jax.Array:
    """x [B·T, h, w, 8], c_noise [B·T], context [B·T, L, C], vector_without_camera [B·T, 768],
    camera (see `embed_camera`) → F [B·T, h, w, 4] float32."""
    y = jnp.concatenate([vector_without_camera.astype(jnp.float32), self.embed_camera(camera)], -1)
    return self.unet(x, c_noise, context, y, num_frames=num_frames,
                     image_only_indicator=image_only_indicator)


def build_gcd_network(cfg: ml_collections.ConfigDict, rngs: nnx.Rngs) -> GCDNetwork:
  return GCDNetwork(cfg, rngs=rngs)
