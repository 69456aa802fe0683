"""Model inputs from a batch (docs/reference.md §1.3, §1.6, §1.7: sgm `GeneralConditioner` with GCD's embedders).

Batch keys (channels-last version of §4.10, rows = B·T with frames inner):
  'cond_frames_without_noise' [B·T, H, W, 3] clean source frames in [-1, 1]   → CLIP → crossattn [B·T, 1, D]
  'cond_frames'               [B·T, H, W, 3] source + cond_aug·N(0, 1)       → VAE (quant_conv, mode, ×1)
                                                                              → concat [B·T, h, w, 4]
  'fps_id', 'motion_bucket_id', 'cond_aug' [B·T]                             → vector [B·T, 3·E] (E =
                                                                                cfg.unet.addition_time_embed_dim)
  'scaled_relative_angles' [B·T, 3] (camera.embedder 'spherical') or
  'scaled_relative_pose' [B·T, 3, 4] ('pose')                                 → cond['camera'] (raw input)
  'jpg' [B·T, H, W, 3] target frames in [-1, 1]                               → `encode_target` (training)

The camera embedder is TRAINABLE (part of `GCDNetwork`), so the conditioner never runs it: `__call__`
returns the frozen part {'crossattn', 'concat', 'vector' (768 wide for SVD), 'camera'} and the caller
appends `network.embed_camera(cond['camera'])` with `append_camera` inside its differentiated function.
The camera embedding sits in the LAST columns of y (it is the last embedder, §1.5).
"""

from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from gcd_jax.models import layers
from gcd_jax.models.clip import preprocess_frames_for_clip
from gcd_jax.models.vae import encode_conditioning, encode_target

CAMERA_KEYS = {'spherical': 'scaled_relative_angles', 'pose': 'scaled_relative_pose'}
VECTOR_KEYS = ('fps_id', 'motion_bucket_id', 'cond_aug')  # the SVD embedder order 1, 2, 4 (§1.3)


def camera_key(model_cfg: ml_collections.ConfigDict) -> str | None:
  """Batch key of the camera input for `model_cfg.camera.embedder` (None without a camera path)."""
  return CAMERA_KEYS.get(model_cfg.camera.embedder)


def vector_conditioning(batch: Mapping[str, jax.Array], embed_dim: int) -> jax.Array:
  """[sinusoid(fps_id) | sinusoid(motion_bucket_id) | sinusoid(cond_aug)] (ConcatTimestepEmbedderND on the
  raw values, cos first) → [B·T, 3·embed_dim] float32."""
  for k in VECTOR_KEYS:
    if k not in batch:
      raise ValueError(f'batch is missing {k!r} ([B·T] per-frame values); the vector conditioning needs '
                       f'{", ".join(VECTOR_KEYS)}')
  return jnp.concatenate([layers.timestep_embedding(jnp.reshape(batch[k], (-1,)), embed_dim)
                          for k in VECTOR_KEYS], axis=-1)


def append_camera(cond: Mapping[str, jax.Array], camera_embedding: jax.Array) -> dict:
  """cond with 'vector' = [vector | camera_embedding] (camera last, §1.5). camera_embedding [B·T, D]
  (D = 0 without a camera path). Call INSIDE the function you differentiate w.r.t. the camera embedder."""
  out = dict(cond)
  out['vector'] = jnp.concatenate([cond['vector'].astype(jnp.float32),
                                   camera_embedding.astype(jnp.float32)], axis=-1)
  return out


def unconditional(cond: Mapping[str, jax.Array]) -> dict:
  """The unconditional branch of sampling (§1.7): CLIP crossattn and concat latents replaced by zeros;
  vector and camera unchanged (§6 item 3)."""
  out = dict(cond)
  out['crossattn'] = jnp.zeros_like(cond['crossattn'])
  out['concat'] = jnp.zeros_like(cond['concat'])
  return out


def ucg_dropout(cond: Mapping[str, jax.Array], key: jax.Array, rate_crossattn: float = 0.1,
                rate_concat: float = 0.1) -> dict:
  """Classifier-free-guidance dropout (§1.6, §6 item 1): independent Bernoulli keep-masks PER ROW (= per
  frame), one for crossattn and one for concat, multiplied in (zeroing). Other keys untouched."""
  k_clip, k_concat = jax.random.split(key)
  n = cond['crossattn'].shape[0]
  out = dict(cond)
  for name, k, rate in (('crossattn', k_clip, rate_crossattn), ('concat', k_concat, rate_concat)):
    keep = jax.random.bernoulli(k, 1.0 - rate, (n,)).astype(cond[name].dtype)
    out[name] = cond[name] * keep.reshape((n,) + (1,) * (cond[name].ndim - 1))
  return out


class Conditioner(nnx.Module):
  """The frozen GCD conditioner: CLIP image tower + VAE (both frozen) → model inputs.

  model_cfg: the FULL model config (configs/models.py). vae: `AutoencoderKLTemporalDecoder`; clip:
  `CLIPVisionModelWithProjection`. The same module objects may be shared with the sampler's decoder.
  """

  def __init__(self, model_cfg: ml_collections.ConfigDict, vae, clip):
    self.vae = vae
    self.clip = clip
    self.clip_image_size = int(model_cfg.clip.image_size)
    self.vector_embed_dim = int(model_cfg.unet.addition_time_embed_dim)
    self.camera_key = camera_key(model_cfg)

  def clip_embeddings(self, clean_frames: jax.Array) -> jax.Array:
    """Per-frame CLIP embedding of the CLEAN source frames (§1.3, §6 item 2): [B·T, H, W, 3] in [-1, 1]
    → [B·T, 1, D] float32."""
    emb = self.clip(preprocess_frames_for_clip(clean_frames, self.clip_image_size))
    return emb[:, None, :].astype(jnp.float32)

  def concat_latents(self, noisy_frames: jax.Array) -> jax.Array:
    """VAE encoder → quant_conv → posterior mode, scale 1.0 (§1.3, §6 item 4): → [B·T, h, w, 4]."""
    return encode_conditioning(self.vae, noisy_frames).astype(jnp.float32)

  def encode_target(self, frames: jax.Array, key: jax.Array) -> jax.Array:
    """Training target latents: encoder WITHOUT quant_conv → posterior SAMPLE × scaling_factor (§1.1,
    §6 item 4). frames [B·T, H, W, 3] in [-1, 1] → [B·T, h, w, 4]."""
    return encode_target(self.vae, frames, key).astype(jnp.float32)

  def __call__(self, batch: Mapping[str, jax.Array], *, key: jax.Array | None = None,
               ucg_rate_crossattn: float = 0.1, ucg_rate_concat: float = 0.1) -> dict:
    """→ {'crossattn' [B·T, 1, D], 'concat' [B·T, h, w, 4], 'vector' [B·T, 3·E], 'camera' (raw camera
    input, [B·T, 3] / [B·T, 3, 4], or [B·T, 0] without a camera path)}.

    key=None: no dropout (sampling; `get_unconditional_conditioning` sets the rates to 0). With a key,
    per-frame CFG dropout at the given rates (training, §1.6).
    """
    for k in ('cond_frames_without_noise', 'cond_frames'):
      if k not in batch:
        raise ValueError(f'batch is missing {k!r} ([B·T, H, W, 3] frames in [-1, 1], channels-last)')
    n = batch['cond_frames'].shape[0]
    if self.camera_key is None:
      camera = jnp.zeros((n, 0), jnp.float32)
    elif self.camera_key not in batch:
      raise ValueError(f'batch is missing {self.camera_key!r}, the input of the model\'s camera embedder; '
                       'pass it or use a model config without a camera path (camera.embedder=none)')
    else:
      camera = jnp.asarray(batch[self.camera_key], jnp.float32)
    cond = dict(
        crossattn=self.clip_embeddings(batch['cond_frames_without_noise']),
        concat=self.concat_latents(batch['cond_frames']),
        vector=vector_conditioning(batch, self.vector_embed_dim),
        camera=camera,
    )
    if key is not None:
      cond = ucg_dropout(cond, key, ucg_rate_crossattn, ucg_rate_concat)
    return cond
