"""Spatial + temporal transformer of the SVD/GCD U-Net (sgm `SpatialVideoTransformer`, diffusers
`TransformerSpatioTemporalModel`), channels-last.

Names mirror diffusers: `norm`, `proj_in`, `transformer_blocks.i` (BasicTransformerBlock: norm1, attn1,
norm2, attn2, norm3, ff), `temporal_transformer_blocks.i` (TemporalBasicTransformerBlock: norm_in, ff_in,
norm1, attn1, norm2, attn2, norm3, ff), `time_pos_embed.linear_{1,2}`, `time_mixer.mix_factor`,
`proj_out` (docs/weights.md §3 lists the sgm spellings).

Math (docs/reference.md §1.2, docs/weights.md §5): x_in → GroupNorm(eps 1e-6) → tokens → proj_in → spatial
block (self-attn, cross-attn to the row's own context, GEGLU FF); x_mix = x + MLP(sinusoid(frame index));
temporal block over frames (ff_in residual, self-attn over T, cross-attn to the FIRST frame's context of
each video — `use_spatial_context=True`, docs/reference.md §6 item 2 — and FF); α·x_spatial + (1−α)·x_mix with
one shared `time_mixer` for all depth layers (as in both references); proj_out; + x_in.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from gcd_jax.models import layers
from gcd_jax.models.resnet import AlphaBlender


class TimestepEmbedding(nnx.Module):
  """diffusers `TimestepEmbedding`: linear_1 → SiLU → linear_2 (sgm `Sequential(Linear, SiLU, Linear)`).

  Used for the U-Net `time_embedding`, `add_embedding` (sgm label_emb), GCD's `aux_label_emb` and the
  transformer's `time_pos_embed`. x: [N, in_channels] → [N, out_dim or time_embed_dim].
  """

  def __init__(self, in_channels: int, time_embed_dim: int, *, out_dim: int | None = None,
               dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.linear_1 = layers.Linear(in_channels, time_embed_dim, **kw)
    self.linear_2 = layers.Linear(time_embed_dim, out_dim or time_embed_dim, **kw)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.linear_2(jax.nn.silu(self.linear_1(x)))


class BasicTransformerBlock(nnx.Module):
  """Spatial block: x += attn1(LN1 x); x += attn2(LN2 x, context); x += FF(LN3 x).

  x: [N, S, dim], context: [N, L, context_dim] → [N, S, dim].
  """

  def __init__(self, dim: int, heads: int, head_dim: int, *, context_dim: int, norm_eps: float = 1e-5,
               dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.norm1 = layers.LayerNorm(dim, eps=norm_eps, **kw)
    self.attn1 = layers.Attention(dim, heads=heads, dim_head=head_dim, **kw)
    self.norm2 = layers.LayerNorm(dim, eps=norm_eps, **kw)
    self.attn2 = layers.Attention(dim, heads=heads, dim_head=head_dim, context_dim=context_dim, **kw)
    self.norm3 = layers.LayerNorm(dim, eps=norm_eps, **kw)
    self.ff = layers.FeedForward(dim, **kw)

  def __call__(self, x: jax.Array, context: jax.Array) -> jax.Array:
    x = x + self.attn1(self.norm1(x))
    x = x + self.attn2(self.norm2(x), context)
    return x + self.ff(self.norm3(x))


class TemporalBasicTransformerBlock(nnx.Module):
  """Temporal block (sgm `VideoTransformerBlock` with `ff_in`), attention over the frame axis.

  x: [B·T, S, dim] rows (S = h·w tokens), time_context: [B, L, context_dim] (first frame's context of
  each video) → [B·T, S, dim].
  """

  def __init__(self, dim: int, heads: int, head_dim: int, *, context_dim: int, norm_eps: float = 1e-5,
               dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    # time_mix_inner_dim == dim in SVD (diffusers `is_res` is True): ff_in and ff are residual.
    self.norm_in = layers.LayerNorm(dim, eps=norm_eps, **kw)
    self.ff_in = layers.FeedForward(dim, dim_out=dim, **kw)
    self.norm1 = layers.LayerNorm(dim, eps=norm_eps, **kw)
    self.attn1 = layers.Attention(dim, heads=heads, dim_head=head_dim, **kw)
    self.norm2 = layers.LayerNorm(dim, eps=norm_eps, **kw)
    self.attn2 = layers.Attention(dim, heads=heads, dim_head=head_dim, context_dim=context_dim, **kw)
    self.norm3 = layers.LayerNorm(dim, eps=norm_eps, **kw)
    self.ff = layers.FeedForward(dim, **kw)
    self.heads = heads

  def __call__(self, x: jax.Array, time_context: jax.Array, *, num_frames: int) -> jax.Array:
    n, s, c = x.shape
    b, t = n // num_frames, num_frames
    h = x.reshape(b, t, s, c).transpose(0, 2, 1, 3).reshape(b * s, t, c)  # (b s) t c
    h = h + self.ff_in(self.norm_in(h))
    h = h + self.attn1(self.norm1(h))
    # Cross-attention: every (position, frame) query of video b attends to the same keys (frame 0's
    # context). Attention is independent per query, so instead of broadcasting the context to all b·s
    # sequences (the reference's `broadcast_to`), attend with queries [b, s·t] — identical math.
    attn2 = self.attn2
    q = attn2.to_q(self.norm2(h)).reshape(b, s * t, -1)
    k, v = attn2.to_k(time_context), attn2.to_v(time_context)
    a = layers.multi_head_attention(q, k, v, self.heads)
    h = h + attn2.to_out[0](a).reshape(b * s, t, c)
    h = h + self.ff(self.norm3(h))
    return h.reshape(b, s, t, c).transpose(0, 2, 1, 3).reshape(n, s, c)


class TransformerSpatioTemporalModel(nnx.Module):
  """x: [B·T, H, W, C] rows, context: [B·T, L, context_dim] (per row), image_only_indicator: [B, T]
  → [B·T, H, W, C]."""

  def __init__(self, in_channels: int, heads: int, head_dim: int, *, context_dim: int,
               depth: int = 1, num_groups: int = 32, norm_eps: float = 1e-6,
               layer_norm_eps: float = 1e-5, zero_init_out: bool = False, dtype=jnp.float32,
               param_dtype=jnp.float32, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    inner = heads * head_dim
    self.in_channels = in_channels
    self.norm = layers.GroupNorm(num_groups, in_channels, eps=norm_eps, **kw)
    self.proj_in = layers.Linear(in_channels, inner, **kw)
    self.transformer_blocks = nnx.List([
        BasicTransformerBlock(inner, heads, head_dim, context_dim=context_dim,
                              norm_eps=layer_norm_eps, **kw) for _ in range(depth)])
    self.temporal_transformer_blocks = nnx.List([
        TemporalBasicTransformerBlock(inner, heads, head_dim, context_dim=context_dim,
                                      norm_eps=layer_norm_eps, **kw) for _ in range(depth)])
    self.time_pos_embed = TimestepEmbedding(in_channels, 4 * in_channels, out_dim=in_channels, **kw)
    self.time_mixer = AlphaBlender(0.5, param_dtype=param_dtype)
    # zero_init_out: sgm's `SpatialTransformer` wraps proj_out in `zero_module` (a fresh block is the identity).
    self.proj_out = layers.Linear(inner, in_channels, zero_init=zero_init_out, **kw)
    self.dtype = dtype

  def __call__(self, x: jax.Array, context: jax.Array, image_only_indicator: jax.Array, *,
               remat: str = 'none') -> jax.Array:
    b, t = image_only_indicator.shape
    n, hh, ww, c = x.shape
    if n != b * t:
      raise ValueError(f'TransformerSpatioTemporalModel: {n} rows but image_only_indicator is {b}×{t}')
    # use_spatial_context: the temporal cross-attention sees frame 0's context of each video.
    time_context = context.reshape(b, t, *context.shape[1:])[:, 0]
    residual = x
    h = self.norm(x).reshape(n, hh * ww, c)
    h = self.proj_in(h)
    pos = self.time_pos_embed(layers.timestep_embedding(jnp.arange(t), self.in_channels))  # [T, C]
    pos = jnp.tile(pos, (b, 1))[:, None, :].astype(h.dtype)  # rows b·T + t → frame t
    alpha = self.time_mixer.alpha(image_only_indicator).reshape(n, 1, 1)
    for block, temporal_block in zip(self.transformer_blocks, self.temporal_transformer_blocks):
      h = remat_call(remat, block, h, context)
      h_mix = remat_call(remat, lambda m, a, ctx: m(a, ctx, num_frames=t), temporal_block,
                         h + pos, time_context, method=True)
      h = self.time_mixer(h, h_mix, alpha)
    h = self.proj_out(h).reshape(n, hh, ww, -1)
    return h + residual.astype(h.dtype)


REMAT_POLICIES = {
    'full': None,  # save nothing inside the block: recompute everything on the backward pass
    # Keep matmul outputs without batch dims (the Linear layers); recompute norms, activations and the
    # batched attention matmuls.
    'dots': jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def remat_call(remat: str, fn_or_module, *args, method: bool = False):
  """Calls a block, rematerialised per `cfg.remat` ('none' | 'full' | 'dots').

  `remat_call(remat, module, *arrays)` calls `module(*arrays)`; with `method=True` the first argument is
  a function `(module, *arrays)` and the second the module (static Python values go in its closure).
  """
  if method:
    fn, module, arrays = fn_or_module, args[0], args[1:]
  else:
    fn, module, arrays = (lambda m, *a: m(*a)), fn_or_module, args
  if remat == 'none':
    return fn(module, *arrays)
  if remat not in REMAT_POLICIES:
    raise ValueError(f"remat={remat!r}; use 'none', 'full' or 'dots'")
  graphdef, state = nnx.split(module)
  pure = lambda st, *a: fn(nnx.merge(graphdef, st), *a)  # noqa: E731
  return ordered_checkpoint(pure, REMAT_POLICIES[remat])(state, *arrays)


def ordered_checkpoint(f, policy=None):
  """`jax.checkpoint(f, policy)` whose forward and backward are pinned to the data flow.

  Same values, same saved residuals; two optimisation barriers only constrain WHEN things run:
  * forward: the block's parameters pass a barrier together with its input activations, so their FSDP
    all-gathers cannot be scheduled before the block is reached (XLA's schedulers otherwise hoist the
    gathers of far-away blocks, keeping most of the network's gathered weights live at once);
  * backward: the residuals pass a barrier together with the incoming cotangent, so the recomputation
    (and its weight all-gathers) of a block cannot start before the backward pass gets there.
  Without differentiation (frozen encoders, sampling) only the forward barrier applies.
  """
  checkpointed = jax.checkpoint(f, policy=policy)

  @jax.custom_vjp
  def call(*args):
    return f(*jax.lax.optimization_barrier(args))

  def fwd(*args):
    args = jax.lax.optimization_barrier(args)
    return jax.vjp(checkpointed, *args)

  def bwd(vjp_fn, ct):
    vjp_fn, ct = jax.lax.optimization_barrier((vjp_fn, ct))
    return vjp_fn(ct)

  call.defvjp(fwd, bwd)
  return call
