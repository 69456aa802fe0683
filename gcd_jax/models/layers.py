"""Primitive layers shared by the U-Net, the temporal VAE and the CLIP tower.

Conventions (see DEVELOPERS.md / README "Python API"):
* Channels-last everywhere: images `[N, H, W, C]`, videos `[B, T, H, W, C]`, tokens `[N, L, C]`.
* Parameters are float32 (`param_dtype`); matmuls/convs run in `dtype` (bfloat16 on accelerators);
  normalisations always compute in float32 and cast back to `dtype` (as sgm's GroupNorm32 does).
* Parameter names mirror diffusers/PyTorch module names (`to_q`, `conv1`, `norm1`, ...) with Flax leaf
  names `kernel` / `bias` / `scale`, so a diffusers key `a.b.0.c.weight` is the NNX path
  `('a', 'b', 0, 'c', 'kernel'|'scale')` and weight conversion is a per-leaf transpose.
* Every parameter carries logical sharding names (`out_sharding` metadata, never eagerly applied);
  `gcd_jax.train.sharding` maps them onto mesh axes. Logical axes used here:
  `embed` (a Linear's input features / a conv's input channels), `mlp` (output features / channels),
  `norm` (norm scales and biases) — and `None` for kernel spatial dims.
* Initialisers reproduce PyTorch defaults (`U(-1/sqrt(fan_in), 1/sqrt(fan_in))` for Linear/Conv weights
  and biases) because GCD initialises its new camera layers with them (docs/reference.md §1.2).
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from gcd_jax.models import attention

Dtype = jnp.dtype | type


def param(rngs: nnx.Rngs | None, init, shape: Sequence[int], sharding: Sequence[str | None],
          param_dtype: Dtype = jnp.float32) -> nnx.Param:
  """An `nnx.Param` with logical sharding names (not applied eagerly; the trainer shards later)."""
  key = rngs.params() if rngs is not None else jax.random.key(0)
  return nnx.Param(init(key, tuple(shape), param_dtype), out_sharding=tuple(sharding),
                   eager_sharding=False)


def abstract_module(build, cfg) -> nnx.Module:
  """`build(cfg, rngs)` with ShapeDtypeStruct parameters: nothing allocated, nothing computed.

  Built with rngs=None (`param` then uses a fixed key): tracing an `nnx.Rngs` instead costs ~15× more,
  because flax inspects every traced counter update (jax builds an error message naming the tracer's
  origin, whose cost grows with the trace: 30 s for the tiny model, 20 s+ for the full U-Net). Only shapes
  matter here. Falls back to `nnx.Rngs(0)` for a constructor that needs real rngs."""
  try:
    return nnx.eval_shape(lambda: build(cfg, None))
  except (TypeError, AttributeError):
    return nnx.eval_shape(lambda: build(cfg, nnx.Rngs(0)))


def torch_uniform_init(fan_in: int):
  """PyTorch's default Linear/Conv init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias."""
  bound = 1.0 / math.sqrt(max(fan_in, 1))

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def zeros_init(key, shape, dtype=jnp.float32):
  del key
  return jnp.zeros(shape, dtype)


def ones_init(key, shape, dtype=jnp.float32):
  del key
  return jnp.ones(shape, dtype)


class Linear(nnx.Module):
  """y = x @ kernel + bias. kernel: [in, out] (PyTorch weight transposed)."""

  def __init__(self, in_features: int, out_features: int, *, use_bias: bool = True,
               zero_init: bool = False, dtype: Dtype = jnp.float32,
               param_dtype: Dtype = jnp.float32, sharding=('embed', 'mlp'), rngs: nnx.Rngs):
    init = zeros_init if zero_init else torch_uniform_init(in_features)
    self.in_features, self.out_features = in_features, out_features
    self.kernel = param(rngs, init, (in_features, out_features), sharding, param_dtype)
    self.bias = param(rngs, init, (out_features,), (sharding[-1],), param_dtype) if use_bias else None
    self.dtype = dtype

  def __call__(self, x: jax.Array) -> jax.Array:
    y = jnp.dot(x.astype(self.dtype), self.kernel[...].astype(self.dtype))
    if self.bias is not None:
      y = y + self.bias[...].astype(self.dtype)
    return y


class Conv(nnx.Module):
  """N-d convolution, channels-last. kernel: [*kernel_size, in, out] (PyTorch OI... → ...IO).

  `padding` is a sequence of (low, high) pairs per spatial dim (PyTorch's symmetric `padding=p` is
  `((p, p),) * nd`); the VAE encoder's asymmetric downsample uses `((0, 1), (0, 1))`.
  """

  def __init__(self, in_features: int, out_features: int, kernel_size: Sequence[int], *,
               strides: Sequence[int] | None = None, padding: Sequence[tuple[int, int]] | None = None,
               use_bias: bool = True, zero_init: bool = False, dtype: Dtype = jnp.float32,
               param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
    kernel_size = tuple(kernel_size)
    nd = len(kernel_size)
    self.strides = tuple(strides) if strides is not None else (1,) * nd
    self.padding = (tuple(tuple(p) for p in padding) if padding is not None
                    else tuple((k // 2, k // 2) for k in kernel_size))
    fan_in = in_features * math.prod(kernel_size)
    init = zeros_init if zero_init else torch_uniform_init(fan_in)
    self.kernel = param(rngs, init, (*kernel_size, in_features, out_features),
                        (None,) * nd + ('embed', 'mlp'), param_dtype)
    self.bias = param(rngs, init, (out_features,), ('mlp',), param_dtype) if use_bias else None
    self.dtype = dtype
    self.nd = nd

  def __call__(self, x: jax.Array) -> jax.Array:
    spatial = 'DHW'[-self.nd:] if self.nd <= 3 else None
    dn = jax.lax.conv_dimension_numbers(
        x.shape, self.kernel.shape, (f'N{spatial}C', f'{spatial}IO', f'N{spatial}C'))
    y = jax.lax.conv_general_dilated(
        x.astype(self.dtype), self.kernel[...].astype(self.dtype), window_strides=self.strides,
        padding=self.padding, dimension_numbers=dn)
    if self.bias is not None:
      y = y + self.bias[...].astype(self.dtype)
    return y


class GroupNorm(nnx.Module):
  """GroupNorm over channels-last input `[N, *spatial, C]`, statistics over (*spatial, C/groups).

  Computes in float32 and returns `dtype` (sgm's GroupNorm32). For a 5-D video `[B, T, H, W, C]` the
  statistics span T as well, exactly like PyTorch GroupNorm on `(b, c, t, h, w)`.
  """

  def __init__(self, num_groups: int, num_channels: int, *, eps: float, dtype: Dtype = jnp.float32,
               param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs | None = None):
    if num_channels % num_groups:
      raise ValueError(f'GroupNorm: {num_channels} channels are not divisible by {num_groups} groups; '
                       'choose channel counts that are multiples of the group count')
    self.num_groups, self.eps, self.dtype = num_groups, eps, dtype
    self.scale = param(rngs, ones_init, (num_channels,), ('norm',), param_dtype)
    self.bias = param(rngs, zeros_init, (num_channels,), ('norm',), param_dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    shape = x.shape
    c = shape[-1]
    x32 = x.astype(jnp.float32).reshape(shape[0], -1, self.num_groups, c // self.num_groups)
    mean = jnp.mean(x32, axis=(1, 3), keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=(1, 3), keepdims=True)
    y = ((x32 - mean) * jax.lax.rsqrt(var + self.eps)).reshape(shape)
    y = y * self.scale[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)
    return y.astype(self.dtype)


class LayerNorm(nnx.Module):
  """LayerNorm over the last axis, float32 statistics. SVD/CLIP use eps 1e-5 (Flax defaults to 1e-6)."""

  def __init__(self, num_features: int, *, eps: float = 1e-5, dtype: Dtype = jnp.float32,
               param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs | None = None):
    self.eps, self.dtype = eps, dtype
    self.scale = param(rngs, ones_init, (num_features,), ('norm',), param_dtype)
    self.bias = param(rngs, zeros_init, (num_features,), ('norm',), param_dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
    y = y * self.scale[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)
    return y.astype(self.dtype)


def timestep_embedding(t: jax.Array, dim: int, max_period: float = 10000.0) -> jax.Array:
  """Sinusoidal embedding `[cos(t·f), sin(t·f)]` (cos first), f_i = exp(-ln(max_period)·i/half).

  t: [N] (float or int, any value: c_noise, frame index, fps id, ...) → [N, dim] float32.
  Matches sgm `timestep_embedding` and diffusers `Timesteps(flip_sin_to_cos=True, shift=0)`.
  """
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = jnp.asarray(t, jnp.float32)[:, None] * freqs[None]
  emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
  if dim % 2:
    emb = jnp.concatenate([emb, jnp.zeros_like(emb[:, :1])], axis=-1)
  return emb


def gelu(x: jax.Array) -> jax.Array:
  """Exact (erf) GELU as PyTorch's default; `jax.nn.gelu` defaults to the tanh approximation."""
  return jax.nn.gelu(x, approximate=False)


def multi_head_attention(q: jax.Array, k: jax.Array, v: jax.Array, num_heads: int) -> jax.Array:
  """Softmax attention, scale 1/sqrt(head_dim), through `attention.dot_product_attention` (the
  implementation in effect: XLA, Pallas flash on TPU, cuDNN on GPU, query-chunked on CPU).

  q: [N, Lq, C], k/v: [N, Lk, C] → [N, Lq, C]. Softmax is taken in float32 for low-precision inputs.
  """
  n, lq, c = q.shape
  lk = k.shape[1]
  d = c // num_heads
  qh = q.reshape(n, lq, num_heads, d)
  kh = k.reshape(n, lk, num_heads, d)
  vh = v.reshape(n, lk, num_heads, d)
  out = attention.dot_product_attention(qh, kh, vh)
  return out.reshape(n, lq, c)


class Attention(nnx.Module):
  """Multi-head (cross-)attention with diffusers names: to_q, to_k, to_v (no bias), to_out (bias).

  x: [N, Lq, query_dim], context: [N, Lk, context_dim] or None (self-attention) → [N, Lq, query_dim].
  """

  def __init__(self, query_dim: int, *, heads: int, dim_head: int, context_dim: int | None = None,
               qkv_bias: bool = False, dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32,
               rngs: nnx.Rngs):
    inner = heads * dim_head
    context_dim = context_dim or query_dim
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.heads = heads
    self.to_q = Linear(query_dim, inner, use_bias=qkv_bias, **kw)
    self.to_k = Linear(context_dim, inner, use_bias=qkv_bias, **kw)
    self.to_v = Linear(context_dim, inner, use_bias=qkv_bias, **kw)
    # diffusers stores the output projection as to_out.0 (to_out.1 is a Dropout).
    self.to_out = nnx.List([Linear(inner, query_dim, **kw)])

  def __call__(self, x: jax.Array, context: jax.Array | None = None) -> jax.Array:
    ctx = x if context is None else context
    out = multi_head_attention(self.to_q(x), self.to_k(ctx), self.to_v(ctx), self.heads)
    return self.to_out[0](out)


class GEGLU(nnx.Module):
  """proj: Linear(dim, 2·inner); output `h · gelu(gate)` with `[h, gate] = split(proj(x))`."""

  def __init__(self, dim_in: int, dim_out: int, *, dtype: Dtype = jnp.float32,
               param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
    self.proj = Linear(dim_in, 2 * dim_out, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    h, gate = jnp.split(self.proj(x), 2, axis=-1)
    return h * gelu(gate.astype(jnp.float32)).astype(h.dtype)


class FeedForward(nnx.Module):
  """GEGLU feed-forward with diffusers names: net.0 = GEGLU(dim, mult·dim), net.2 = Linear(·, dim_out)."""

  def __init__(self, dim: int, *, dim_out: int | None = None, mult: int = 4,
               dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
    inner = dim * mult
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    # Index 1 (Dropout) has no parameters; keep the index layout of diffusers' `net` with a None slot.
    self.net = nnx.List([GEGLU(dim, inner, **kw), None, Linear(inner, dim_out or dim, **kw)])

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.net[2](self.net[0](x))
