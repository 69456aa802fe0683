"""The temporal VAE of SVD / GCD (diffusers `AutoencoderKLTemporalDecoder`, sgm `AutoencodingEngine` +
`VideoDecoder`).

Parameter names are diffusers' own (docs/weights.md §4 gives the sgm names), so
`gcd_jax.convert.torch_layout.load_torch_state` / `convert.diffusers.load_diffusers_component` load a
diffusers `vae/` state dict 1:1:

* `encoder.{conv_in, down_blocks.i.resnets.j.{norm1,conv1,norm2,conv2,conv_shortcut},
  down_blocks.i.downsamplers.0.conv, mid_block.resnets.{0,1}, mid_block.attentions.0.{group_norm,to_q,
  to_k,to_v,to_out.0}, conv_norm_out, conv_out}` — the SD KL encoder (GroupNorm eps 1e-6 everywhere, as
  diffusers hard-codes; the downsample conv pads (0, 1) asymmetrically, stride 2).
* `quant_conv` — 1×1 conv 2z → 2z.
* `decoder.{conv_in, mid_block.{resnets.{0,1}, attentions.0}, up_blocks.i.resnets.j.{spatial_res_block.*,
  temporal_res_block.*, time_mixer.mix_factor}, up_blocks.i.upsamplers.0.conv, conv_norm_out, conv_out,
  time_conv_out}` — the SD decoder with a temporal (3,1,1) ResBlock after every spatial ResBlock and a
  (3,1,1) Conv3d after `conv_out`. Spatial GroupNorm eps 1e-6, temporal 1e-5 (docs/weights.md §5).

Numerics that differ from the U-Net (docs/weights.md §5, §7):
* The decoder blend is REVERSED: `α·x_temporal + (1−α)·x_spatial`, α = sigmoid(mix_factor), with no
  image-only override (diffusers `merge_strategy="learned"`, `switch_spatial_to_temporal_mix=True`).
* Mid-block attention is single-head with d = C, preceded by its own GroupNorm (eps 1e-6), residual.

GCD uses two encoder paths (docs/reference.md §1.3, ambiguity §6 item 4 — both are supported here):
* conditioning latents: encoder → `quant_conv` → posterior MODE, scale 1.0 (`encode_conditioning`);
* target latents: encoder WITHOUT `quant_conv` → posterior SAMPLE × 0.18215 (`encode_target`).
`encode(x, use_quant_conv=...)` exposes both; diffusers' own `encode` always applies `quant_conv`.

Layout: channels-last images `[N, H, W, 3]` in [-1, 1]; latents `[N, H/2^(L-1), W/2^(L-1), 4]`
(/8 for the 4-level SVD VAE); rows of a video batch are B·T with frames inner (row = b·T + t).
Matmuls/convs run in `cfg.dtype`, norms in float32; `encode` / `decode` return float32.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from gcd_jax.models import layers
from gcd_jax.models.config import dtype_of, validate_model_config
from gcd_jax.models.resnet import AlphaBlender, ResnetBlock2D, TemporalResnetBlock, silu, temporal_conv
from gcd_jax.models.transformer import remat_call
from gcd_jax.models.unet import Upsample2D

# diffusers hard-codes these (Encoder / TemporalDecoder / SpatioTemporalResBlock(eps, temporal_eps)).
SPATIAL_NORM_EPS = 1e-6
TEMPORAL_NORM_EPS = 1e-5
# DiagonalGaussianDistribution clamps logvar (diffusers and sgm alike).
LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0


class VAEAttention(nnx.Module):
  """diffusers `Attention(residual_connection=True, norm_num_groups=32, bias=True)` of the VAE mid block.

  x: [N, H, W, C] → [N, H, W, C]: x + to_out(attn(GN(x))) over the H·W tokens, `heads` heads of C/heads.
  """

  def __init__(self, channels: int, *, heads: int = 1, num_groups: int = 32, eps: float = 1e-6,
               dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.heads = heads
    self.group_norm = layers.GroupNorm(num_groups, channels, eps=eps, **kw)
    self.to_q = layers.Linear(channels, channels, **kw)
    self.to_k = layers.Linear(channels, channels, **kw)
    self.to_v = layers.Linear(channels, channels, **kw)
    self.to_out = nnx.List([layers.Linear(channels, channels, **kw)])
    self.dtype = dtype

  def __call__(self, x: jax.Array) -> jax.Array:
    n, h, w, c = x.shape
    tokens = self.group_norm(x).reshape(n, h * w, c)
    out = layers.multi_head_attention(self.to_q(tokens), self.to_k(tokens), self.to_v(tokens),
                                      self.heads)
    out = self.to_out[0](out).reshape(n, h, w, c)
    return x.astype(self.dtype) + out


class Downsample2D(nnx.Module):
  """VAE encoder downsample: pad (0, 1) bottom/right with zeros, conv 3×3 stride 2, no padding.

  (diffusers `Downsample2D(padding=0)` pads `(0, 1, 0, 1)`; sgm `Downsample(with_conv)` does the same.)
  x: [N, H, W, C] → [N, ⌈H/2⌉, ⌈W/2⌉, C].
  """

  def __init__(self, channels: int, *, dtype, param_dtype, rngs: nnx.Rngs):
    self.conv = layers.Conv(channels, channels, (3, 3), strides=(2, 2), padding=((0, 1), (0, 1)),
                            dtype=dtype, param_dtype=param_dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.conv(x)


class DownEncoderBlock2D(nnx.Module):
  """`num_layers` ResnetBlock2D (no time embedding) + optional downsample. x: [N, H, W, C_in]."""

  def __init__(self, in_ch: int, out_ch: int, *, num_layers: int, downsample: bool, num_groups: int,
               remat: str, kw: dict):
    self.resnets = nnx.List([
        ResnetBlock2D(in_ch if i == 0 else out_ch, out_ch, temb_channels=None, eps=SPATIAL_NORM_EPS,
                      num_groups=num_groups, **kw) for i in range(num_layers)])
    self.downsamplers = nnx.List([Downsample2D(out_ch, **kw)]) if downsample else None
    self.remat = remat

  def __call__(self, x: jax.Array) -> jax.Array:
    for resnet in self.resnets:
      x = remat_call(self.remat, lambda m, a: m(a, None), resnet, x, method=True)
    if self.downsamplers is not None:
      x = self.downsamplers[0](x)
    return x


class UNetMidBlock2D(nnx.Module):
  """Encoder mid block: ResBlock → single-head attention (d = C) → ResBlock (eps 1e-6)."""

  def __init__(self, ch: int, *, num_groups: int, remat: str, kw: dict):
    self.resnets = nnx.List([
        ResnetBlock2D(ch, ch, temb_channels=None, eps=SPATIAL_NORM_EPS, num_groups=num_groups, **kw)
        for _ in range(2)])
    self.attentions = nnx.List([VAEAttention(ch, heads=1, num_groups=num_groups,
                                             eps=SPATIAL_NORM_EPS, **kw)])
    self.remat = remat

  def __call__(self, x: jax.Array) -> jax.Array:
    call = lambda m, a: m(a, None)  # pylint: disable=unnecessary-lambda-assignment
    x = remat_call(self.remat, call, self.resnets[0], x, method=True)
    x = remat_call(self.remat, self.attentions[0], x)
    return remat_call(self.remat, call, self.resnets[1], x, method=True)


class Encoder(nnx.Module):
  """diffusers `Encoder(double_z=True)`. x: [N, H, W, in_ch] → moments [N, h, w, 2·latent_channels]."""

  def __init__(self, v: ml_collections.ConfigDict, *, remat: str, kw: dict):
    chans = tuple(v.block_out_channels)
    self.conv_in = layers.Conv(v.in_channels, chans[0], (3, 3), **kw)
    blocks = []
    for i, ch in enumerate(chans):
      blocks.append(DownEncoderBlock2D(chans[max(i - 1, 0)], ch, num_layers=v.layers_per_block,
                                       downsample=i < len(chans) - 1, num_groups=v.num_groups,
                                       remat=remat, kw=kw))
    self.down_blocks = nnx.List(blocks)
    self.mid_block = UNetMidBlock2D(chans[-1], num_groups=v.num_groups, remat=remat, kw=kw)
    self.conv_norm_out = layers.GroupNorm(v.num_groups, chans[-1], eps=SPATIAL_NORM_EPS, **kw)
    self.conv_out = layers.Conv(chans[-1], 2 * v.latent_channels, (3, 3), **kw)

  def __call__(self, x: jax.Array) -> jax.Array:
    h = self.conv_in(x)
    for block in self.down_blocks:
      h = block(h)
    h = self.mid_block(h)
    return self.conv_out(silu(self.conv_norm_out(h)))


class TemporalDecoderResBlock(nnx.Module):
  """diffusers `SpatioTemporalResBlock(temb_channels=None, eps=1e-6, temporal_eps=1e-5, merge_factor=0,
  merge_strategy="learned", switch_spatial_to_temporal_mix=True)` (sgm `VideoResBlock` of the decoder).

  x: [B·T, H, W, C_in] (frames inner), num_frames T → [B·T, H, W, C_out];
  out = α·temporal(spatial(x)) + (1−α)·spatial(x), α = sigmoid(mix_factor) (no image-only override).
  """

  def __init__(self, in_ch: int, out_ch: int, *, num_groups: int, kw: dict):
    self.spatial_res_block = ResnetBlock2D(in_ch, out_ch, temb_channels=None, eps=SPATIAL_NORM_EPS,
                                           num_groups=num_groups, **kw)
    self.temporal_res_block = TemporalResnetBlock(out_ch, out_ch, temb_channels=None,
                                                  eps=TEMPORAL_NORM_EPS, num_groups=num_groups, **kw)
    # merge_factor 0.0 at init (diffusers MidBlockTemporalDecoder / UpBlockTemporalDecoder).
    self.time_mixer = AlphaBlender(0.0, switch_spatial_to_temporal_mix=True,
                                   param_dtype=kw['param_dtype'])

  def __call__(self, x: jax.Array, num_frames: int) -> jax.Array:
    h = self.spatial_res_block(x, None)
    n, hh, ww, c = h.shape
    video = h.reshape(n // num_frames, num_frames, hh, ww, c)
    temporal = self.temporal_res_block(video, None)
    alpha = jax.nn.sigmoid(self.time_mixer.mix_factor[...].astype(jnp.float32))
    out = self.time_mixer(video, temporal, alpha)  # switched: α·temporal + (1−α)·spatial
    return out.reshape(n, hh, ww, c)


class MidBlockTemporalDecoder(nnx.Module):
  """resnets.0 → attentions.0 → resnets.1 (diffusers needs layers_per_block=2 for this layout)."""

  def __init__(self, ch: int, *, num_layers: int, num_groups: int, remat: str, kw: dict):
    self.resnets = nnx.List([TemporalDecoderResBlock(ch, ch, num_groups=num_groups, kw=kw)
                             for _ in range(num_layers)])
    self.attentions = nnx.List([VAEAttention(ch, heads=1, num_groups=num_groups,
                                             eps=SPATIAL_NORM_EPS, **kw)])
    self.remat = remat

  def __call__(self, x: jax.Array, num_frames: int) -> jax.Array:
    call = lambda m, a: m(a, num_frames)  # pylint: disable=unnecessary-lambda-assignment
    x = remat_call(self.remat, call, self.resnets[0], x, method=True)
    # diffusers zips resnets[1:] with attentions: only one attention, so extra resnets are skipped
    # exactly as there (num_layers = layers_per_block; SVD uses 2).
    for resnet, attn in zip(self.resnets[1:], self.attentions):
      x = remat_call(self.remat, attn, x)
      x = remat_call(self.remat, call, resnet, x, method=True)
    return x


class UpBlockTemporalDecoder(nnx.Module):
  """`num_layers` TemporalDecoderResBlocks + optional nearest ×2 upsample + conv."""

  def __init__(self, in_ch: int, out_ch: int, *, num_layers: int, upsample: bool, num_groups: int,
               remat: str, kw: dict):
    self.resnets = nnx.List([
        TemporalDecoderResBlock(in_ch if i == 0 else out_ch, out_ch, num_groups=num_groups, kw=kw)
        for i in range(num_layers)])
    self.upsamplers = nnx.List([Upsample2D(out_ch, **kw)]) if upsample else None
    self.remat = remat

  def __call__(self, x: jax.Array, num_frames: int) -> jax.Array:
    call = lambda m, a: m(a, num_frames)  # pylint: disable=unnecessary-lambda-assignment
    for resnet in self.resnets:
      x = remat_call(self.remat, call, resnet, x, method=True)
    if self.upsamplers is not None:
      x = self.upsamplers[0](x)
    return x


class TemporalDecoder(nnx.Module):
  """diffusers `TemporalDecoder` (sgm `VideoDecoder`). z: [B·T, h, w, latent] → [B·T, H, W, out_ch]."""

  def __init__(self, v: ml_collections.ConfigDict, *, remat: str, kw: dict):
    chans = tuple(v.block_out_channels)
    rev = chans[::-1]
    self.conv_in = layers.Conv(v.latent_channels, rev[0], (3, 3), **kw)
    self.mid_block = MidBlockTemporalDecoder(rev[0], num_layers=v.layers_per_block,
                                             num_groups=v.num_groups, remat=remat, kw=kw)
    self.up_blocks = nnx.List([
        UpBlockTemporalDecoder(rev[max(i - 1, 0)], ch, num_layers=v.layers_per_block + 1,
                               upsample=i < len(rev) - 1, num_groups=v.num_groups, remat=remat, kw=kw)
        for i, ch in enumerate(rev)])
    self.conv_norm_out = layers.GroupNorm(v.num_groups, chans[0], eps=SPATIAL_NORM_EPS, **kw)
    self.conv_out = layers.Conv(chans[0], v.out_channels, (3, 3), **kw)
    self.time_conv_out = layers.Conv(v.out_channels, v.out_channels, (3, 1, 1),
                                     padding=((1, 1), (0, 0), (0, 0)), **kw)

  def __call__(self, z: jax.Array, num_frames: int) -> jax.Array:
    h = self.conv_in(z)
    h = self.mid_block(h, num_frames)
    for block in self.up_blocks:
      h = block(h, num_frames)
    h = self.conv_out(silu(self.conv_norm_out(h)))
    n, hh, ww, c = h.shape
    video = temporal_conv(self.time_conv_out, h.reshape(n // num_frames, num_frames, hh, ww, c))
    return video.reshape(n, hh, ww, c)


class AutoencoderKLTemporalDecoder(nnx.Module):
  """KL encoder + temporal decoder (diffusers names). cfg: the FULL model config (uses cfg.vae)."""

  def __init__(self, cfg: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
    validate_model_config(cfg)
    v = cfg.vae
    if v.layers_per_block < 2:
      # diffusers builds the decoder mid block with `layers_per_block` resnets; with 1 the mid
      # attention silently disappears, which no SVD checkpoint has (docs/weights.md §4).
      raise ValueError(f'vae.layers_per_block={v.layers_per_block}: the temporal decoder needs ≥ 2 '
                       '(its mid block is ResBlock, attention, ResBlock); SVD uses 2')
    self.dtype = dtype_of(cfg.dtype)
    kw = dict(dtype=self.dtype, param_dtype=dtype_of(cfg.param_dtype), rngs=rngs)
    self.encoder = Encoder(v, remat=cfg.remat, kw=kw)
    self.decoder = TemporalDecoder(v, remat=cfg.remat, kw=kw)
    self.quant_conv = layers.Conv(2 * v.latent_channels, 2 * v.latent_channels, (1, 1), **kw)
    self.latent_channels = v.latent_channels
    self.scaling_factor = float(v.scaling_factor)
    self.decode_chunk_size = int(v.decode_chunk_size)
    self.downsample_factor = 2 ** (len(v.block_out_channels) - 1)

  def encode(self, x: jax.Array, *, use_quant_conv: bool = True) -> tuple[jax.Array, jax.Array]:
    """x: [N, H, W, 3] in [-1, 1] → (mean, logvar), each [N, H/f, W/f, latent] float32.

    use_quant_conv=True: diffusers `encode` and GCD's conditioning path; False: GCD's target path (sgm
    `first_stage_model` has no quant_conv). logvar is clamped to [-30, 20] as DiagonalGaussianDistribution.
    """
    if x.ndim != 4 or x.shape[-1] != self.encoder.conv_in.kernel.shape[-2]:
      raise ValueError(f'VAE encode: expected channels-last images [N, H, W, '
                       f'{self.encoder.conv_in.kernel.shape[-2]}], got shape {x.shape}')
    moments = self.encoder(x)
    if use_quant_conv:
      moments = self.quant_conv(moments)
    moments = moments.astype(jnp.float32)
    mean, logvar = jnp.split(moments, 2, axis=-1)
    return mean, jnp.clip(logvar, LOGVAR_MIN, LOGVAR_MAX)

  def decode(self, z: jax.Array, *, num_frames: int, chunk_size: int | None = None) -> jax.Array:
    """z: [B·T, h, w, latent] (already divided by scaling_factor), frames inner → [B·T, H, W, 3] float32.

    num_frames: T, the frames per video. chunk_size: frames decoded together (sgm `decoding_t`,
    diffusers `decode_chunk_size`); None decodes each video whole. Each chunk is treated as a video of
    its own length — the temporal convs never see across a chunk border, so the result depends on
    chunk_size (docs/reference.md §1.3). Chunks are taken per video (frames t = 0..c−1, c..2c−1, ...; the
    last may be shorter). This equals sgm/diffusers, which chunk the flat B·T rows, whenever B = 1 or
    chunk_size divides T; otherwise the references would blend the tail of one video with the head of
    the next inside one temporal window, which we do not reproduce.
    """
    n = z.shape[0]
    if z.ndim != 4 or z.shape[-1] != self.latent_channels:
      raise ValueError(f'VAE decode: expected latents [B·T, h, w, {self.latent_channels}], got {z.shape}')
    if num_frames < 1 or n % num_frames:
      raise ValueError(f'VAE decode: {n} latent rows are not a whole number of videos of '
                       f'num_frames={num_frames}; rows must be B·T with frames inner')
    b, t = n // num_frames, num_frames
    c = t if chunk_size is None else int(chunk_size)
    if c < 1:
      raise ValueError(f'VAE decode: chunk_size={chunk_size} must be ≥ 1 (or None for whole videos)')
    c = min(c, t)
    full, rest = divmod(t, c)
    video = z.reshape(b, t, *z.shape[1:])
    outs = []
    if full:
      # [B, full·c, ...] → [full, B·c, ...]: every chunk is a batch of B videos of c frames. Chunks go
      # through lax.map one at a time so memory stays that of one chunk (the reason the references
      # chunk at all).
      head = video[:, :full * c].reshape(b, full, c, *z.shape[1:]).swapaxes(0, 1)
      head = head.reshape(full, b * c, *z.shape[1:])
      if full == 1:
        dec = self.decoder(head[0], c)[None]
      else:
        # Merge the decoder inside the mapped function: NNX modules (and nnx.remat within them) must
        # live at the trace level of the lax.map body, not be mutated across it.
        graphdef, state = nnx.split(self.decoder)
        dec = jax.lax.map(lambda zc: nnx.merge(graphdef, state, copy=True)(zc, c), head)
      dec = dec.reshape(full, b, c, *dec.shape[2:]).swapaxes(0, 1)
      outs.append(dec.reshape(b, full * c, *dec.shape[3:]))
    if rest:
      tail = video[:, full * c:].reshape(b * rest, *z.shape[1:])
      dec = self.decoder(tail, rest)
      outs.append(dec.reshape(b, rest, *dec.shape[1:]))
    out = jnp.concatenate(outs, axis=1) if len(outs) > 1 else outs[0]
    return out.reshape(n, *out.shape[2:]).astype(jnp.float32)

  def __call__(self, x: jax.Array, *, num_frames: int, chunk_size: int | None = None) -> jax.Array:
    """Reconstruction with the posterior mode (diffusers `forward(sample_posterior=False)`)."""
    mean, _ = self.encode(x)
    return self.decode(mean, num_frames=num_frames, chunk_size=chunk_size)


def posterior_mode(mean: jax.Array, logvar: jax.Array) -> jax.Array:
  """Mode of the diagonal Gaussian posterior (= its mean)."""
  del logvar
  return mean


def posterior_sample(mean: jax.Array, logvar: jax.Array, key: jax.Array) -> jax.Array:
  """mean + exp(½·clip(logvar, −30, 20))·ε, ε ~ N(0, 1) (diffusers / sgm DiagonalGaussianDistribution)."""
  std = jnp.exp(0.5 * jnp.clip(logvar.astype(jnp.float32), LOGVAR_MIN, LOGVAR_MAX))
  return mean + std * jax.random.normal(key, mean.shape, mean.dtype)


def encode_conditioning(vae: AutoencoderKLTemporalDecoder, frames: jax.Array) -> jax.Array:
  """GCD's concat-conditioning latents (docs/reference.md §1.3, §6 item 4): encoder → quant_conv → posterior
  mode, NOT scaled (scale_factor 1.0). frames: [N, H, W, 3] in [-1, 1] (noise-augmented) → [N, h, w, 4]."""
  mean, logvar = vae.encode(frames, use_quant_conv=True)
  return posterior_mode(mean, logvar)


def encode_target(vae: AutoencoderKLTemporalDecoder, frames: jax.Array, key: jax.Array) -> jax.Array:
  """GCD's diffusion-target latents (docs/reference.md §1.3, §6 item 4): encoder WITHOUT quant_conv →
  posterior sample × scaling_factor (0.18215). frames: [N, H, W, 3] in [-1, 1] → [N, h, w, 4]."""
  mean, logvar = vae.encode(frames, use_quant_conv=False)
  return posterior_sample(mean, logvar, key) * vae.scaling_factor


def build_vae(cfg: ml_collections.ConfigDict, rngs: nnx.Rngs) -> AutoencoderKLTemporalDecoder:
  """The temporal VAE of `cfg` (full model config). Use `nnx.eval_shape(lambda: build_vae(cfg,
  nnx.Rngs(0)))` for an abstract tree to load weights into."""
  return AutoencoderKLTemporalDecoder(cfg, rngs=rngs)


def diffusers_vae_config(cfg: ml_collections.ConfigDict) -> dict:
  """kwargs of diffusers `AutoencoderKLTemporalDecoder` that build the same VAE as `cfg.vae`."""
  v = cfg.vae
  if v.num_groups != 32:
    raise ValueError(f'vae.num_groups={v.num_groups}: diffusers hard-codes 32 groups')
  return dict(in_channels=v.in_channels, out_channels=v.out_channels,
              down_block_types=('DownEncoderBlock2D',) * len(v.block_out_channels),
              block_out_channels=tuple(v.block_out_channels), layers_per_block=v.layers_per_block,
              latent_channels=v.latent_channels, scaling_factor=v.scaling_factor)


def count_params(module: nnx.Module) -> int:
  return sum(math.prod(x.shape) for x in jax.tree.leaves(nnx.state(module, nnx.Param)))


__all__ = ['AutoencoderKLTemporalDecoder', 'build_vae', 'posterior_mode', 'posterior_sample',
           'encode_conditioning', 'encode_target', 'diffusers_vae_config', 'LOGVAR_MIN', 'LOGVAR_MAX']
