"""The spatio-temporal U-Net of SVD / GCD (sgm `VideoUNet`, diffusers `UNetSpatioTemporalConditionModel`).

Interface (contract): per-row inputs, rows = B·T with frames inner (row = b·T + t), channels-last.
  x [B·T, h, w, in_channels], timesteps [B·T] (= c_noise), context [B·T, L, context_dim],
  y [B·T, adm_in_channels + aux_emb_dim], image_only_indicator [B, T] or None (= zeros)
  → [B·T, h, w, out_channels] float32.
This is sgm's interface and a superset of diffusers' (which repeats one context / one set of ids over
the frames): GCD conditions every frame separately (docs/weights.md §2c, docs/reference.md §1.5).

emb = time_embedding(sinusoid(timesteps)) + add_embedding(y[:, :adm]) [+ aux_label_emb(y[:, adm:])] is
computed per row and reaches every ResBlock per frame (docs/reference.md §1.5). `aux_label_emb` is GCD's
camera MLP (Linear(aux, 1280) → SiLU → Linear(1280, 1280)); its sgm keys
`model.diffusion_model.aux_label_emb.{0,2}.{weight,bias}` are our `aux_label_emb.linear_{1,2}.*`.

Parameter names are diffusers' (`time_embedding.linear_1`, `down_blocks.0.resnets.1.spatial_res_block.
conv1`, ...), so `convert/torch_layout.py` loads a diffusers `unet/` state dict 1:1.

Block structure from the sgm config (configs/models.py): level ℓ has `model_channels·channel_mult[ℓ]`
channels and spatial+temporal transformers iff `2**ℓ in attention_resolutions`; down level ℓ =
`down_blocks.ℓ` (num_res_blocks ResBlocks, a stride-2 conv except at the last level), `mid_block`
(ResBlock, transformer, ResBlock), `up_blocks.i` = level n−1−i (num_res_blocks+1 ResBlocks on the
concatenated skips, nearest ×2 + conv except at the last). GroupNorm eps of the ResBlocks come from
`resblock_norm_eps` ('sgm': 1e-5 everywhere, the reference we default to; 'diffusers': its table).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from gcd_jax.models import layers
from gcd_jax.models.config import dtype_of, resblock_norm_eps, validate_model_config
from gcd_jax.models.resnet import SpatioTemporalResBlock
from gcd_jax.models.transformer import TimestepEmbedding, TransformerSpatioTemporalModel, remat_call


class Downsample2D(nnx.Module):
  """conv 3×3, stride 2, symmetric padding 1 (sgm `Downsample`, diffusers `Downsample2D(padding=1)`)."""

  def __init__(self, channels: int, *, dtype, param_dtype, rngs: nnx.Rngs):
    self.conv = layers.Conv(channels, channels, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)),
                            dtype=dtype, param_dtype=param_dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.conv(x)


class Upsample2D(nnx.Module):
  """nearest ×2 then conv 3×3 (sgm `Upsample`, diffusers `Upsample2D`). x: [N, h, w, C] → [N, 2h, 2w, C]."""

  def __init__(self, channels: int, *, dtype, param_dtype, rngs: nnx.Rngs):
    self.conv = layers.Conv(channels, channels, (3, 3), dtype=dtype, param_dtype=param_dtype,
                            rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    n, h, w, c = x.shape
    x = jnp.broadcast_to(x[:, :, None, :, None, :], (n, h, 2, w, 2, c)).reshape(n, 2 * h, 2 * w, c)
    return self.conv(x)


class _Block(nnx.Module):
  """Shared forward of the down / up / mid blocks: ResBlock then (optional) transformer, per layer."""

  resnets: nnx.List
  attentions: nnx.List | None
  remat: str

  def _layer(self, i: int, h, emb, context, image_only_indicator):
    h = remat_call(self.remat, self.resnets[i], h, emb, image_only_indicator)
    if self.attentions is not None:
      h = self.attentions[i](h, context, image_only_indicator, remat=self.remat)
    return h


def zero_init(u: ml_collections.ConfigDict) -> bool:
  """unet.zero_init (default True, the reference's init): the last layer of every residual branch (ResBlock
  conv2, temporal conv2, transformer proj_out) and conv_out start at zero, as sgm's `zero_module` does, so a
  fresh block is the identity. Matters only for training from scratch and for layers added to a trained
  network (`--config.init_missing`); converted weights overwrite it."""
  return bool(u.get('zero_init', True))


def _transformer(ch: int, u: ml_collections.ConfigDict, kw: dict) -> TransformerSpatioTemporalModel:
  return TransformerSpatioTemporalModel(
      ch, ch // u.num_head_channels, u.num_head_channels, context_dim=u.context_dim,
      depth=u.transformer_depth, num_groups=u.num_groups, norm_eps=u.transformer_norm_eps,
      layer_norm_eps=u.layer_norm_eps, zero_init_out=zero_init(u), **kw)


class DownBlockSpatioTemporal(_Block):
  """diffusers `(CrossAttn)DownBlockSpatioTemporal`; x: [B·T, h, w, C_in] → (x_out, skips)."""

  def __init__(self, in_ch: int, out_ch: int, *, num_layers: int, attention: bool, downsample: bool,
               eps: float, temb: int, u, remat: str, kw: dict):
    self.resnets = nnx.List([
        SpatioTemporalResBlock(in_ch if i == 0 else out_ch, out_ch, temb_channels=temb, eps=eps,
                               num_groups=u.num_groups, zero_init_out=zero_init(u), **kw) for i in range(num_layers)])
    self.attentions = (nnx.List([_transformer(out_ch, u, kw) for _ in range(num_layers)])
                       if attention else None)
    self.downsamplers = (nnx.List([Downsample2D(out_ch, **kw)]) if downsample else None)
    self.remat = remat

  def __call__(self, h, emb, context, image_only_indicator):
    skips = []
    for i in range(len(self.resnets)):
      h = self._layer(i, h, emb, context, image_only_indicator)
      skips.append(h)
    if self.downsamplers is not None:
      h = self.downsamplers[0](h)
      skips.append(h)
    return h, skips


class UNetMidBlockSpatioTemporal(_Block):
  """ResBlock → transformer → ResBlock (diffusers order: resnets.0, attentions.0, resnets.1)."""

  def __init__(self, ch: int, *, eps: float, temb: int, u, remat: str, kw: dict):
    self.resnets = nnx.List([
        SpatioTemporalResBlock(ch, ch, temb_channels=temb, eps=eps, num_groups=u.num_groups,
                               zero_init_out=zero_init(u), **kw)
        for _ in range(2)])
    self.attentions = nnx.List([_transformer(ch, u, kw)])
    self.remat = remat

  def __call__(self, h, emb, context, image_only_indicator):
    h = remat_call(self.remat, self.resnets[0], h, emb, image_only_indicator)
    h = self.attentions[0](h, context, image_only_indicator, remat=self.remat)
    return remat_call(self.remat, self.resnets[1], h, emb, image_only_indicator)


class UpBlockSpatioTemporal(_Block):
  """diffusers `(CrossAttn)UpBlockSpatioTemporal`: each ResBlock takes `cat([h, skip])` (h first)."""

  def __init__(self, prev_ch: int, out_ch: int, skip_in_ch: int, *, num_layers: int, attention: bool,
               upsample: bool, eps: float, temb: int, u, remat: str, kw: dict):
    resnets = []
    for i in range(num_layers):
      res_skip = skip_in_ch if i == num_layers - 1 else out_ch
      res_in = prev_ch if i == 0 else out_ch
      resnets.append(SpatioTemporalResBlock(res_in + res_skip, out_ch, temb_channels=temb, eps=eps,
                                            num_groups=u.num_groups, zero_init_out=zero_init(u), **kw))
    self.resnets = nnx.List(resnets)
    self.attentions = (nnx.List([_transformer(out_ch, u, kw) for _ in range(num_layers)])
                       if attention else None)
    self.upsamplers = nnx.List([Upsample2D(out_ch, **kw)]) if upsample else None
    self.remat = remat

  def __call__(self, h, skips, emb, context, image_only_indicator):
    for i in range(len(self.resnets)):
      h = jnp.concatenate([h, skips.pop().astype(h.dtype)], axis=-1)
      h = self._layer(i, h, emb, context, image_only_indicator)
    if self.upsamplers is not None:
      h = self.upsamplers[0](h)
    return h


class VideoUNet(nnx.Module):
  """The SVD / GCD U-Net. `cfg` is the FULL model config (configs/models.py); see the module docstring."""

  def __init__(self, cfg: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
    validate_model_config(cfg)
    u = cfg.unet
    self.in_channels, self.context_dim = u.in_channels, u.context_dim
    self.dtype = dtype_of(cfg.dtype)
    kw = dict(dtype=self.dtype, param_dtype=dtype_of(cfg.param_dtype), rngs=rngs)
    remat = cfg.remat
    chans = [u.model_channels * m for m in u.channel_mult]
    n = len(chans)
    temb = 4 * u.model_channels
    has_attn = [2 ** lvl in tuple(u.attention_resolutions) for lvl in range(n)]
    self.model_channels, self.adm_in_channels, self.aux_emb_dim = (
        u.model_channels, u.adm_in_channels, u.aux_emb_dim)

    self.time_embedding = TimestepEmbedding(u.model_channels, temb, **kw)
    self.add_embedding = TimestepEmbedding(u.adm_in_channels, temb, **kw)
    # GCD camera MLP (docs/reference.md §1.5); PyTorch default init for the new layers (aux_zero_init False).
    self.aux_label_emb = (TimestepEmbedding(u.aux_emb_dim, temb, **kw) if u.aux_emb_dim else None)
    self.conv_in = layers.Conv(u.in_channels, chans[0], (3, 3), **kw)

    down, ch = [], chans[0]
    for lvl in range(n):
      down.append(DownBlockSpatioTemporal(
          ch, chans[lvl], num_layers=u.num_res_blocks, attention=has_attn[lvl],
          downsample=lvl < n - 1, eps=resblock_norm_eps(u, 'down', lvl), temb=temb, u=u,
          remat=remat, kw=kw))
      ch = chans[lvl]
    self.down_blocks = nnx.List(down)
    self.mid_block = UNetMidBlockSpatioTemporal(chans[-1], eps=resblock_norm_eps(u, 'mid', 0),
                                                temb=temb, u=u, remat=remat, kw=kw)
    up, prev = [], chans[-1]
    for i in range(n):
      lvl = n - 1 - i
      up.append(UpBlockSpatioTemporal(
          prev, chans[lvl], chans[max(lvl - 1, 0)], num_layers=u.num_res_blocks + 1,
          attention=has_attn[lvl], upsample=i < n - 1, eps=resblock_norm_eps(u, 'up', i), temb=temb,
          u=u, remat=remat, kw=kw))
      prev = chans[lvl]
    self.up_blocks = nnx.List(up)
    self.conv_norm_out = layers.GroupNorm(u.num_groups, chans[0], eps=u.out_norm_eps, **kw)
    self.conv_out = layers.Conv(chans[0], u.out_channels, (3, 3), zero_init=zero_init(u), **kw)
    self.num_levels = n

  def embed(self, timesteps: jax.Array, y: jax.Array) -> jax.Array:
    """Per-row emb [B·T, 4·model_channels] = time + label (+ camera) embeddings."""
    emb = self.time_embedding(layers.timestep_embedding(timesteps, self.model_channels))
    emb = emb + self.add_embedding(y[:, :self.adm_in_channels])
    if self.aux_label_emb is not None:
      emb = emb + self.aux_label_emb(y[:, self.adm_in_channels:])
    return emb

  def __call__(self, x: jax.Array, timesteps: jax.Array, context: jax.Array, y: jax.Array, *,
               num_frames: int, image_only_indicator: jax.Array | None = None) -> jax.Array:
    n, hh, ww, _ = x.shape
    self._check_inputs(x, timesteps, context, y, num_frames, image_only_indicator)
    b = n // num_frames
    if image_only_indicator is None:
      image_only_indicator = jnp.zeros((b, num_frames), jnp.float32)
    emb = self.embed(timesteps, y)
    context = context.astype(self.dtype)
    h = self.conv_in(x)
    skips = [h]
    for block in self.down_blocks:
      h, s = block(h, emb, context, image_only_indicator)
      skips.extend(s)
    h = self.mid_block(h, emb, context, image_only_indicator)
    for block in self.up_blocks:
      k = len(block.resnets)
      h = block(h, skips[-k:], emb, context, image_only_indicator)
      skips = skips[:-k]
    h = self.conv_out(jax.nn.silu(self.conv_norm_out(h)))
    return h.astype(jnp.float32)

  def _check_inputs(self, x, timesteps, context, y, num_frames, image_only_indicator):
    n, hh, ww, c = x.shape
    problems = []
    if c != self.in_channels:
      problems.append(f'x has {c} channels, the U-Net takes {self.in_channels} '
                      '([noisy·c_in | cond latent])')
    if num_frames <= 0 or n % num_frames:
      problems.append(f'{n} rows are not a whole number of videos of num_frames={num_frames}')
    if tuple(timesteps.shape) != (n,):
      problems.append(f'timesteps shape {tuple(timesteps.shape)}, expected ({n},) (one per row)')
    if context.ndim != 3 or context.shape[0] != n or context.shape[2] != self.context_dim:
      problems.append(f'context shape {tuple(context.shape)}, expected ({n}, L, {self.context_dim})')
    want_y = self.adm_in_channels + self.aux_emb_dim
    if tuple(y.shape) != (n, want_y):
      problems.append(f'y shape {tuple(y.shape)}, expected ({n}, {want_y}) = adm_in_channels '
                      f'{self.adm_in_channels} + aux_emb_dim {self.aux_emb_dim} (camera embedding '
                      'last)')
    if image_only_indicator is not None and num_frames and tuple(image_only_indicator.shape) != (
        n // num_frames, num_frames):
      problems.append(f'image_only_indicator shape {tuple(image_only_indicator.shape)}, expected '
                      f'({n // max(num_frames, 1)}, {num_frames})')
    f = 2 ** (self.num_levels - 1)
    if hh % f or ww % f:
      problems.append(f'latent size {hh}×{ww} is not divisible by {f} (the U-Net halves it '
                      f'{self.num_levels - 1} times); crop or pad the input')
    if problems:
      raise ValueError('VideoUNet: ' + '; '.join(problems))


def build_unet(cfg: ml_collections.ConfigDict, rngs: nnx.Rngs) -> VideoUNet:
  """`VideoUNet(cfg, rngs=rngs)`; use `nnx.eval_shape(lambda: build_unet(cfg, nnx.Rngs(0)))` for an
  abstract (allocation-free) model to load weights into."""
  return VideoUNet(cfg, rngs=rngs)
