"""Spatio-temporal ResBlocks of the SVD/GCD U-Net (sgm `VideoResBlock`, diffusers `SpatioTemporalResBlock`).

Layout: rows `[B·T, H, W, C]` with frames inner (row = b·T + t); the temporal branch views them as videos
`[B, T, H, W, C]`. Names mirror diffusers (`spatial_res_block.{norm1,conv1,time_emb_proj,norm2,conv2,
conv_shortcut}`, `temporal_res_block.{...}`, `time_mixer.mix_factor`) so `convert/torch_layout.py` maps the
weights 1:1 (docs/weights.md §3 gives the sgm names).

Math (docs/reference.md §1.2, docs/weights.md §5): spatial ResBlock GN→SiLU→conv3×3 (+ Linear(SiLU(emb)))
→GN→SiLU→conv3×3 (+ 1×1 skip if the width changes); temporal ResBlock the same with Conv3d (3,1,1) kernels
over frames (zero padding per video) and the per-frame emb; then `α·x_spatial + (1−α)·x_temporal`,
α = sigmoid(mix_factor), α = 1 on image-only frames (`merge_strategy='learned_with_images'`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from gcd_jax.models import layers


def silu(x: jax.Array) -> jax.Array:
  return jax.nn.silu(x)


class ResnetBlock2D(nnx.Module):
  """diffusers `ResnetBlock2D` (time_embedding_norm='default', 32 groups).

  x: [N, H, W, C_in], temb: [N, temb_channels] or None → [N, H, W, C_out].
  """

  def __init__(self, in_channels: int, out_channels: int, *, temb_channels: int | None, eps: float,
               num_groups: int = 32, zero_init_out: bool = False, dtype=jnp.float32, param_dtype=jnp.float32,
               rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.norm1 = layers.GroupNorm(num_groups, in_channels, eps=eps, **kw)
    self.conv1 = layers.Conv(in_channels, out_channels, (3, 3), **kw)
    self.time_emb_proj = (layers.Linear(temb_channels, out_channels, **kw)
                          if temb_channels is not None else None)
    self.norm2 = layers.GroupNorm(num_groups, out_channels, eps=eps, **kw)
    # zero_init_out: sgm's `ResBlock` wraps its last conv in `zero_module` (a fresh block is the identity).
    self.conv2 = layers.Conv(out_channels, out_channels, (3, 3), zero_init=zero_init_out, **kw)
    self.conv_shortcut = (layers.Conv(in_channels, out_channels, (1, 1), **kw)
                          if in_channels != out_channels else None)
    self.dtype = dtype

  def __call__(self, x: jax.Array, temb: jax.Array | None) -> jax.Array:
    h = self.conv1(silu(self.norm1(x)))
    if self.time_emb_proj is not None:
      h = h + self.time_emb_proj(silu(temb.astype(jnp.float32)))[:, None, None, :]
    h = self.conv2(silu(self.norm2(h)))  # Dropout(0.0) in both references.
    skip = x.astype(self.dtype) if self.conv_shortcut is None else self.conv_shortcut(x)
    return skip + h


class TemporalResnetBlock(nnx.Module):
  """diffusers `TemporalResnetBlock`: ResBlock with Conv3d kernels (3, 1, 1), padding (1, 0, 0).

  x: [B, T, H, W, C_in], temb: [B, T, temb_channels] or None → [B, T, H, W, C_out].
  The frame axis is zero-padded per video, so frames of different videos never mix.
  """

  def __init__(self, in_channels: int, out_channels: int, *, temb_channels: int | None, eps: float,
               num_groups: int = 32, zero_init_out: bool = False, dtype=jnp.float32, param_dtype=jnp.float32,
               rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    pad = ((1, 1), (0, 0), (0, 0))
    self.norm1 = layers.GroupNorm(num_groups, in_channels, eps=eps, **kw)
    self.conv1 = layers.Conv(in_channels, out_channels, (3, 1, 1), padding=pad, **kw)
    self.time_emb_proj = (layers.Linear(temb_channels, out_channels, **kw)
                          if temb_channels is not None else None)
    self.norm2 = layers.GroupNorm(num_groups, out_channels, eps=eps, **kw)
    self.conv2 = layers.Conv(out_channels, out_channels, (3, 1, 1), padding=pad, zero_init=zero_init_out, **kw)
    self.conv_shortcut = (layers.Conv(in_channels, out_channels, (1, 1, 1), **kw)
                          if in_channels != out_channels else None)
    self.dtype = dtype

  def __call__(self, x: jax.Array, temb: jax.Array | None) -> jax.Array:
    h = temporal_conv(self.conv1, silu(self.norm1(x)))
    if self.time_emb_proj is not None:
      # Per-frame emb (sgm: `(b t) c → b c t 1 1`): every frame gets its own time/label/camera vector.
      h = h + self.time_emb_proj(silu(temb.astype(jnp.float32)))[:, :, None, None, :]
    h = temporal_conv(self.conv2, silu(self.norm2(h)))
    skip = x.astype(self.dtype) if self.conv_shortcut is None else self.conv_shortcut(x)
    return skip + h


def temporal_conv(conv: layers.Conv, x: jax.Array) -> jax.Array:
  """A (3, 1, 1) Conv3d over frames, x: [B, T, H, W, C_in] → [B, T, H, W, C_out].

  Written as one matmul over the three frame-shifted copies instead of `conv_general_dilated` with a
  (3,1,1) window: same math (zero padding over T), but XLA:CPU runs a plain dot much faster than a
  3-D convolution (measured in bench/unet_forward.py).
  """
  k = conv.kernel[...]
  if k.shape[:3] != (3, 1, 1) or conv.padding != ((1, 1), (0, 0), (0, 0)):
    return conv(x)
  dtype = conv.dtype
  x = x.astype(dtype)
  xp = jnp.pad(x, ((0, 0), (1, 1), (0, 0), (0, 0), (0, 0)))
  t = x.shape[1]
  stacked = jnp.concatenate([xp[:, 0:t], xp[:, 1:t + 1], xp[:, 2:t + 2]], axis=-1)
  w = k.reshape(3 * k.shape[3], k.shape[4]).astype(dtype)
  y = jnp.dot(stacked, w)
  if conv.bias is not None:
    y = y + conv.bias[...].astype(dtype)
  return y


class AlphaBlender(nnx.Module):
  """Learned merge of the spatial and temporal branches (`merge_strategy='learned_with_images'`).

  out = α·x_spatial + (1−α)·x_temporal (or the reverse with `switch_spatial_to_temporal_mix`, used by
  the VAE decoder), α = sigmoid(mix_factor) per frame, α = 1 where `image_only_indicator` is set.
  mix_factor: shape (1,), initialised to 0.5 as in both references.
  """

  def __init__(self, alpha: float = 0.5, *, switch_spatial_to_temporal_mix: bool = False,
               param_dtype=jnp.float32, rngs: nnx.Rngs | None = None):
    self.mix_factor = layers.param(None, lambda k, s, d: jnp.full(s, alpha, d), (1,), (None,),
                                   param_dtype)
    self.switch_spatial_to_temporal_mix = switch_spatial_to_temporal_mix

  def alpha(self, image_only_indicator: jax.Array) -> jax.Array:
    """image_only_indicator: [B, T] → α [B, T] float32."""
    a = jax.nn.sigmoid(self.mix_factor[...].astype(jnp.float32))[0]
    return jnp.where(image_only_indicator.astype(bool), 1.0, a).astype(jnp.float32)

  def __call__(self, x_spatial: jax.Array, x_temporal: jax.Array, alpha: jax.Array) -> jax.Array:
    """x_*: [...]; alpha already broadcastable to them (see `alpha`)."""
    alpha = alpha.astype(x_spatial.dtype)
    if self.switch_spatial_to_temporal_mix:
      x_spatial, x_temporal = x_temporal, x_spatial
    return alpha * x_spatial + (1 - alpha) * x_temporal


class SpatioTemporalResBlock(nnx.Module):
  """sgm `VideoResBlock` / diffusers `SpatioTemporalResBlock`.

  x: [B·T, H, W, C_in] rows, temb: [B·T, temb_channels] (per row) or None,
  image_only_indicator: [B, T] → [B·T, H, W, C_out].
  """

  def __init__(self, in_channels: int, out_channels: int, *, temb_channels: int | None, eps: float,
               temporal_eps: float | None = None, num_groups: int = 32,
               switch_spatial_to_temporal_mix: bool = False, zero_init_out: bool = False, dtype=jnp.float32,
               param_dtype=jnp.float32, rngs: nnx.Rngs):
    kw = dict(num_groups=num_groups, zero_init_out=zero_init_out, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.spatial_res_block = ResnetBlock2D(in_channels, out_channels, temb_channels=temb_channels,
                                           eps=eps, **kw)
    self.temporal_res_block = TemporalResnetBlock(
        out_channels, out_channels, temb_channels=temb_channels,
        eps=temporal_eps if temporal_eps is not None else eps, **kw)
    self.time_mixer = AlphaBlender(0.5, switch_spatial_to_temporal_mix=switch_spatial_to_temporal_mix,
                                   param_dtype=param_dtype)

  def __call__(self, x: jax.Array, temb: jax.Array | None, image_only_indicator: jax.Array
               ) -> jax.Array:
    b, t = image_only_indicator.shape
    h = self.spatial_res_block(x, temb)
    n, hh, ww, c = h.shape
    if n != b * t:
      raise ValueError(f'SpatioTemporalResBlock: {n} rows but image_only_indicator is {b}×{t}; rows '
                       'must be B·T with frames inner')
    video = h.reshape(b, t, hh, ww, c)
    temb_v = temb.reshape(b, t, -1) if temb is not None else None
    temporal = self.temporal_res_block(video, temb_v)
    alpha = self.time_mixer.alpha(image_only_indicator)[:, :, None, None, None]
    out = self.time_mixer(video, temporal, alpha)
    return out.reshape(n, hh, ww, c)
