"""The CLIP image tower of SVD / GCD (OpenCLIP ViT-H/14 as transformers `CLIPVisionModelWithProjection`),
and GCD's frame preprocessing for it.

transformers 5 has no Flax CLIP (docs/dependencies.md), so this is our own ViT. Parameter names are transformers'
(`vision_model.embeddings.{patch_embedding, class_embedding, position_embedding}`,
`vision_model.pre_layrnorm` (sic), `vision_model.encoder.layers.i.{layer_norm1, self_attn.{q,k,v,out}_proj,
layer_norm2, mlp.{fc1, fc2}}`, `vision_model.post_layernorm`, `visual_projection`), so a diffusers
`image_encoder/` folder loads 1:1 through `gcd_jax.convert` (the position embedding's leaf is
`embedding` → torch `.weight`; docs/weights.md §4 gives the OpenCLIP names of the sgm checkpoint).

Forward: patches (conv p×p stride p, no bias) → [CLS ‖ patches] + positions → pre-LN → pre-norm
transformer layers (x += attn(LN1 x); x += MLP(LN2 x)) → post-LN of the CLS token → visual_projection
(no bias) = `image_embeds` [N, projection_dim]. GELU is exact erf for ViT-H (`hidden_act='gelu'`);
`'quick_gelu'` (x·σ(1.702x), OpenAI CLIPs) is supported as well. LayerNorm eps 1e-5.

GCD preprocessing (docs/reference.md §1.3, sgm `FrozenOpenCLIPImageEmbedder.preprocess`):
`kornia.geometry.resize(x, (224, 224), interpolation='bicubic', align_corners=True, antialias=True)`
(no crop: a 3:2 frame is squashed), then [-1, 1] → [0, 1], then CLIP mean/std normalisation.
kornia's antialias is a Gaussian blur before the bicubic resize, only when downscaling (max factor > 1):
σ = max((factor − 1)/2, 0.001) per axis, kernel size k = int(max(4σ, 3)) made odd, reflect padding,
applied along x then y. `jax.image.resize` uses half-pixel centres and a = −0.5, so both the blur and
torch's bicubic (a = −0.75, align_corners=True, border-clamped taps) are written here as per-axis
matrices: the whole preprocessing is one [S, H] and one [S, W] matmul per image.
"""

from __future__ import annotations

import functools
import json
import math
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from gcd_jax.models import layers
from gcd_jax.models.config import dtype_of, validate_model_config
from gcd_jax.models.transformer import remat_call

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
BICUBIC_A = -0.75  # PyTorch's cubic convolution coefficient (upsample_bicubic2d)


def quick_gelu(x: jax.Array) -> jax.Array:
  return x * jax.nn.sigmoid(1.702 * x)


ACTIVATIONS = {'gelu': layers.gelu, 'quick_gelu': quick_gelu}


def _normal_init(std: float):
  def init(key, shape, dtype=jnp.float32):
    return std * jax.random.normal(key, shape, dtype)
  return init


class Embedding(nnx.Module):
  """A lookup table with leaf `embedding` [num, dim] (torch `nn.Embedding.weight`)."""

  def __init__(self, num: int, dim: int, *, std: float = 0.02, param_dtype=jnp.float32,
               rngs: nnx.Rngs):
    self.embedding = layers.param(rngs, _normal_init(std), (num, dim), (None, None), param_dtype)


class CLIPVisionEmbeddings(nnx.Module):
  """pixel_values [N, S, S, 3] → tokens [N, 1 + (S/p)², D] ([CLS ‖ patches, row-major] + positions)."""

  def __init__(self, c: ml_collections.ConfigDict, *, dtype, param_dtype, rngs: nnx.Rngs):
    d, p = c.hidden_size, c.patch_size
    self.image_size, self.patch_size = c.image_size, p
    self.class_embedding = layers.param(rngs, _normal_init(d ** -0.5), (d,), (None,), param_dtype)
    self.patch_embedding = layers.Conv(3, d, (p, p), strides=(p, p), padding=((0, 0), (0, 0)),
                                       use_bias=False, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.position_embedding = Embedding((c.image_size // p) ** 2 + 1, d, param_dtype=param_dtype,
                                        rngs=rngs)
    self.dtype = dtype

  def __call__(self, pixel_values: jax.Array) -> jax.Array:
    n, h, w, _ = pixel_values.shape
    if (h, w) != (self.image_size, self.image_size):
      raise ValueError(f'CLIP: input is {h}×{w} but the tower expects {self.image_size}×'
                       f'{self.image_size}; run preprocess_frames_for_clip first')
    patches = self.patch_embedding(pixel_values)
    patches = patches.reshape(n, -1, patches.shape[-1])
    cls = jnp.broadcast_to(self.class_embedding[...].astype(self.dtype), (n, 1, patches.shape[-1]))
    tokens = jnp.concatenate([cls, patches], axis=1)
    return tokens + self.position_embedding.embedding[...].astype(self.dtype)[None]


class CLIPAttention(nnx.Module):
  """Self-attention with biases: q_proj, k_proj, v_proj, out_proj. x: [N, L, D] → [N, L, D]."""

  def __init__(self, d: int, heads: int, *, kw: dict):
    self.heads = heads
    self.q_proj = layers.Linear(d, d, **kw)
    self.k_proj = layers.Linear(d, d, **kw)
    self.v_proj = layers.Linear(d, d, **kw)
    self.out_proj = layers.Linear(d, d, **kw)

  def __call__(self, x: jax.Array) -> jax.Array:
    out = layers.multi_head_attention(self.q_proj(x), self.k_proj(x), self.v_proj(x), self.heads)
    return self.out_proj(out)


class CLIPMLP(nnx.Module):
  """fc1 → activation → fc2. x: [N, L, D] → [N, L, D]."""

  def __init__(self, d: int, inner: int, act: str, *, kw: dict):
    if act not in ACTIVATIONS:
      raise ValueError(f'CLIP hidden_act={act!r} is not supported; use one of {sorted(ACTIVATIONS)}')
    self.act = act
    self.fc1 = layers.Linear(d, inner, **kw)
    self.fc2 = layers.Linear(inner, d, **kw)

  def __call__(self, x: jax.Array) -> jax.Array:
    h = self.fc1(x)
    # Activation in float32 (exact erf GELU is sensitive to bf16 inputs), back to the compute dtype.
    return self.fc2(ACTIVATIONS[self.act](h.astype(jnp.float32)).astype(h.dtype))


class CLIPEncoderLayer(nnx.Module):
  """Pre-norm transformer layer: x += attn(LN1 x); x += MLP(LN2 x)."""

  def __init__(self, c: ml_collections.ConfigDict, *, kw: dict):
    d = c.hidden_size
    norm_kw = dict(eps=c.layer_norm_eps, dtype=kw['dtype'], param_dtype=kw['param_dtype'],
                   rngs=kw['rngs'])
    self.layer_norm1 = layers.LayerNorm(d, **norm_kw)
    self.self_attn = CLIPAttention(d, c.num_heads, kw=kw)
    self.layer_norm2 = layers.LayerNorm(d, **norm_kw)
    self.mlp = CLIPMLP(d, c.intermediate_size, c.hidden_act, kw=kw)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = x + self.self_attn(self.layer_norm1(x))
    return x + self.mlp(self.layer_norm2(x))


class CLIPEncoder(nnx.Module):
  def __init__(self, c: ml_collections.ConfigDict, *, remat: str, kw: dict):
    self.layers = nnx.List([CLIPEncoderLayer(c, kw=kw) for _ in range(c.num_layers)])
    self.remat = remat

  def __call__(self, x: jax.Array) -> jax.Array:
    for layer in self.layers:
      x = remat_call(self.remat, layer, x)
    return x


class CLIPVisionTransformer(nnx.Module):
  """transformers `CLIPVisionTransformer`: pixel_values [N, S, S, 3] → pooled [N, D] (post-LN of CLS)."""

  def __init__(self, c: ml_collections.ConfigDict, *, remat: str, kw: dict):
    norm_kw = dict(eps=c.layer_norm_eps, dtype=kw['dtype'], param_dtype=kw['param_dtype'],
                   rngs=kw['rngs'])
    self.embeddings = CLIPVisionEmbeddings(c, **kw)
    self.pre_layrnorm = layers.LayerNorm(c.hidden_size, **norm_kw)  # transformers' spelling
    self.encoder = CLIPEncoder(c, remat=remat, kw=kw)
    self.post_layernorm = layers.LayerNorm(c.hidden_size, **norm_kw)

  def __call__(self, pixel_values: jax.Array) -> jax.Array:
    h = self.encoder(self.pre_layrnorm(self.embeddings(pixel_values)))
    return self.post_layernorm(h[:, 0])


class CLIPVisionModelWithProjection(nnx.Module):
  """pixel_values [N, S, S, 3] (CLIP-normalised, channels-last) → image_embeds [N, projection_dim] f32.

  cfg: the FULL model config (uses cfg.clip, cfg.dtype, cfg.param_dtype, cfg.remat).
  """

  def __init__(self, cfg: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
    validate_model_config(cfg)
    c = cfg.clip
    kw = dict(dtype=dtype_of(cfg.dtype), param_dtype=dtype_of(cfg.param_dtype), rngs=rngs)
    self.vision_model = CLIPVisionTransformer(c, remat=cfg.remat, kw=kw)
    self.visual_projection = layers.Linear(c.hidden_size, c.projection_dim, use_bias=False, **kw)
    self.image_size = c.image_size

  def __call__(self, pixel_values: jax.Array) -> jax.Array:
    if pixel_values.ndim != 4 or pixel_values.shape[-1] != 3:
      raise ValueError(f'CLIP: expected channels-last images [N, S, S, 3], got {pixel_values.shape}')
    return self.visual_projection(self.vision_model(pixel_values)).astype(jnp.float32)


def build_clip(cfg: ml_collections.ConfigDict, rngs: nnx.Rngs) -> CLIPVisionModelWithProjection:
  """The CLIP image tower of `cfg` (full model config)."""
  return CLIPVisionModelWithProjection(cfg, rngs=rngs)


# ---------------------------------------------------------------------------------------------------
# Preprocessing (kornia antialiased bicubic resize, align_corners=True)


def _cubic_weights(t: np.ndarray, a: float = BICUBIC_A) -> np.ndarray:
  """Weights of taps at offsets −1, 0, 1, 2 for fractional positions t (PyTorch's cubic convolution)."""
  def near(x):  # |x| ≤ 1
    return ((a + 2) * x - (a + 3)) * x * x + 1

  def far(x):  # 1 < |x| < 2
    return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

  return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=-1)


@functools.lru_cache(maxsize=64)
def bicubic_matrix(in_size: int, out_size: int) -> np.ndarray:
  """[out, in] float64 matrix of F.interpolate(mode='bicubic', align_corners=True) along one axis.

  Source position x = dst·(in−1)/(out−1) (0 when out = 1); taps floor(x)−1 .. floor(x)+2 clamped to
  the border (PyTorch `upsample_get_value_bounded`).
  """
  scale = (in_size - 1) / (out_size - 1) if out_size > 1 else 0.0
  # PyTorch computes the source index in float32 for float inputs: do the same so floor() agrees.
  src = (np.float32(scale) * np.arange(out_size, dtype=np.float32)).astype(np.float64)
  base = np.floor(src)
  w = _cubic_weights(src - base)
  m = np.zeros((out_size, in_size))
  for k in range(4):
    idx = np.clip(base.astype(np.int64) - 1 + k, 0, in_size - 1)
    np.add.at(m, (np.arange(out_size), idx), w[:, k])
  return m


def kornia_antialias_sigma_and_size(in_size: int, out_size: int) -> tuple[float, int]:
  """kornia.geometry.resize's Gaussian (σ, kernel size) for one axis (only used when downscaling)."""
  sigma = max((in_size / out_size - 1.0) / 2.0, 0.001)
  ks = int(max(2.0 * 2 * sigma, 3))
  if ks % 2 == 0:
    ks += 1
  return sigma, ks


@functools.lru_cache(maxsize=64)
def gaussian_blur_matrix(size: int, sigma: float, ks: int) -> np.ndarray:
  """[size, size] float64 matrix of kornia's 1-D Gaussian filter with 'reflect' padding (same size)."""
  x = np.arange(ks, dtype=np.float64) - ks // 2
  g = np.exp(-(x ** 2) / (2 * sigma ** 2))
  g /= g.sum()
  pad = (ks - 1) // 2
  if pad >= size:
    raise ValueError(f'antialias blur: kernel {ks} needs more than {size} pixels to reflect-pad')
  m = np.zeros((size, size))
  for i in range(size):
    for k in range(ks):
      j = i + k - pad
      j = -j if j < 0 else (2 * (size - 1) - j if j > size - 1 else j)  # torch 'reflect'
      m[i, j] += g[k]
  return m


@functools.lru_cache(maxsize=64)
def resize_matrices(h: int, w: int, out_h: int, out_w: int, antialias: bool = True
                    ) -> tuple[np.ndarray, np.ndarray]:
  """([out_h, h], [out_w, w]) float64 matrices of kornia.geometry.resize(bicubic, align_corners=True)."""
  if (h, w) == (out_h, out_w):
    return np.eye(h), np.eye(w)  # kornia returns the input unchanged
  mh, mw = bicubic_matrix(h, out_h), bicubic_matrix(w, out_w)
  if antialias and max(h / out_h, w / out_w) > 1:  # kornia blurs only when downscaling
    mh = mh @ gaussian_blur_matrix(h, *kornia_antialias_sigma_and_size(h, out_h))
    mw = mw @ gaussian_blur_matrix(w, *kornia_antialias_sigma_and_size(w, out_w))
  return mh, mw


def resize_bicubic(images: jax.Array, size: tuple[int, int], *, antialias: bool = True) -> jax.Array:
  """kornia.geometry.resize(images, size, 'bicubic', align_corners=True, antialias) in JAX.

  images: [N, H, W, C] → [N, size[0], size[1], C] float32. antialias=False is exactly torch's
  F.interpolate(mode='bicubic', align_corners=True).
  """
  _, h, w, _ = images.shape
  mh, mw = resize_matrices(h, w, int(size[0]), int(size[1]), bool(antialias))
  x = images.astype(jnp.float32)
  hp = jax.lax.Precision.HIGHEST
  x = jnp.einsum('oh,nhwc->nowc', jnp.asarray(mh, jnp.float32), x, precision=hp)
  return jnp.einsum('pw,nowc->nopc', jnp.asarray(mw, jnp.float32), x, precision=hp)


def preprocess_frames_for_clip(frames: jax.Array, image_size: int = 224) -> jax.Array:
  """GCD's CLIP preprocessing (docs/reference.md §1.3): frames [N, H, W, 3] in [-1, 1] → [N, S, S, 3].

  Antialiased bicubic resize to S×S (align_corners=True, no crop: the frame is squashed), [-1, 1] →
  [0, 1], then (x − CLIP_MEAN) / CLIP_STD.
  """
  if frames.ndim != 4 or frames.shape[-1] != 3:
    raise ValueError(f'preprocess_frames_for_clip: expected [N, H, W, 3] frames in [-1, 1], got '
                     f'{frames.shape}')
  x = resize_bicubic(frames, (image_size, image_size), antialias=True)
  x = (x + 1.0) / 2.0
  return (x - jnp.asarray(CLIP_MEAN, jnp.float32)) / jnp.asarray(CLIP_STD, jnp.float32)


# ---------------------------------------------------------------------------------------------------
# Config from a transformers / diffusers `image_encoder/config.json`


def clip_config_from_transformers(config_json_path: str) -> ml_collections.ConfigDict:
  """Our `cfg.clip` section from a transformers CLIPVisionConfig json (a diffusers `image_encoder/`
  folder or its config.json; a full CLIPConfig json's `vision_config` works too).

  Read through transformers' own CLIPVisionConfig (no torch needed), so omitted fields take
  transformers' defaults (e.g. hidden_act 'quick_gelu').
  """
  from transformers import CLIPVisionConfig  # pylint: disable=g-import-not-at-top
  path = os.fspath(config_json_path)
  if os.path.isdir(path):
    path = os.path.join(path, 'config.json')
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path} does not exist; pass an image_encoder/ folder or its config.json')
  with open(path) as f:
    raw = json.load(f)
  if 'vision_config' in raw:  # a full CLIPConfig
    raw = raw['vision_config'] or {}
  raw = {k: v for k, v in raw.items() if not k.startswith('_')}
  try:
    hf = CLIPVisionConfig(**raw)
  except Exception as e:  # transformers validates (e.g. hidden size vs heads) with its own error types
    raise ValueError(f'{path} is not a valid CLIPVisionConfig: {e}') from e
  if getattr(hf, 'num_channels', 3) != 3:
    raise ValueError(f'{path}: num_channels={hf.num_channels}; the CLIP tower takes RGB (3)')
  if hf.hidden_act not in ACTIVATIONS:
    raise ValueError(f'{path}: hidden_act={hf.hidden_act!r} is not supported; use one of '
                     f'{sorted(ACTIVATIONS)}')
  return ml_collections.ConfigDict(dict(
      hidden_size=int(hf.hidden_size), num_layers=int(hf.num_hidden_layers),
      num_heads=int(hf.num_attention_heads), intermediate_size=int(hf.intermediate_size),
      patch_size=int(hf.patch_size), image_size=int(hf.image_size),
      projection_dim=int(hf.projection_dim), layer_norm_eps=float(hf.layer_norm_eps),
      hidden_act=str(hf.hidden_act)))


def count_params(module: nnx.Module) -> int:
  return sum(math.prod(x.shape) for x in jax.tree.leaves(nnx.state(module, nnx.Param)))


__all__ = ['CLIPVisionModelWithProjection', 'build_clip', 'preprocess_frames_for_clip', 'resize_bicubic',
           'bicubic_matrix', 'clip_config_from_transformers', 'CLIP_MEAN', 'CLIP_STD']
