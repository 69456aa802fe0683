"""VideoUNet parity with diffusers' UNetSpatioTemporalConditionModel (tiny, random weights, CPU, f32).

Every torch parameter is randomised (norms, mix factors and zero-init convs included) and copied into
the Flax model through `torch_layout.load_torch_state`, so the test also checks the parameter naming.
The diffusers GroupNorm eps layout is selected on our side (`eps=diffusers`, docs/weights.md §5).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from gcd_jax.models import presets as models
from gcd_jax.convert.diffusers import diffusers_unet_config
from gcd_jax.convert.torch_layout import leaf_specs, load_torch_state
from gcd_jax.models import layers
from gcd_jax.models.layers import timestep_embedding
from gcd_jax.models.unet import VideoUNet
from tests.fixtures_unet import diffusers_unet, numpy_state, randomise_

B, T, H, W = 2, 3, 8, 8
TOL = 1e-4


def _load(cfg, tensors) -> VideoUNet:
  module = layers.abstract_module(_build_unet, cfg)
  load_torch_state(module, tensors)
  return module


def _build_unet(cfg, rngs):
  return VideoUNet(cfg, rngs=rngs)


@nnx.jit(static_argnames=('num_frames',))
def _forward(module, x, t, ctx, y, ioi, *, num_frames):
  return module(x, t, ctx, y, num_frames=num_frames, image_only_indicator=ioi)


@pytest.fixture(scope='module')
def ref():
  """One randomised diffusers U-Net + GCD aux MLP, and Flax copies for `tiny_svd` and `tiny` (GCD)."""
  from diffusers.models.embeddings import TimestepEmbedding  # pylint: disable=g-import-not-at-top
  cfg_svd = models.get_config('tiny_svd,eps=diffusers')
  cfg_gcd = models.get_config('tiny,eps=diffusers')
  tm = diffusers_unet(cfg_svd, seed=0)
  aux = randomise_(TimestepEmbedding(cfg_gcd.unet.aux_emb_dim, 4 * cfg_gcd.unet.model_channels), 1)
  state = numpy_state(tm)
  return dict(tm=tm, aux=aux, cfg_svd=cfg_svd, cfg_gcd=cfg_gcd,
              flax_svd=_load(cfg_svd, state),
              flax_gcd=_load(cfg_gcd, {**state, **numpy_state(aux, 'aux_label_emb.')}))


def _to_rows(sample):  # torch (B, T, C, h, w) → ours (B·T, h, w, C)
  b, t, c, h, w = sample.shape
  return jnp.asarray(sample.reshape(b * t, c, h, w).transpose(0, 2, 3, 1))


def _from_rows(out, b, t):  # ours (B·T, h, w, C) → torch (B, T, C, h, w)
  out = np.asarray(out)
  return out.reshape(b, t, *out.shape[1:]).transpose(0, 1, 4, 2, 3)


@pytest.mark.parametrize('num_tokens', [1, 3])
def test_matches_diffusers_top_level(ref, num_tokens):
  """Frame-constant conditioning through diffusers' own forward (repeat_interleave over frames)."""
  rng = np.random.default_rng(num_tokens)
  cd = ref['cfg_svd'].unet.context_dim
  sample = rng.standard_normal((B, T, 8, H, W)).astype(np.float32)
  t = rng.uniform(-1.5, 1.5, B).astype(np.float32)
  ehs = rng.standard_normal((B, num_tokens, cd)).astype(np.float32)
  ids = np.stack([rng.uniform(3, 30, B), rng.uniform(0, 255, B), rng.uniform(0, 0.1, B)], 1)
  ids = ids.astype(np.float32)
  with torch.no_grad():
    want = ref['tm'](torch.from_numpy(sample), torch.from_numpy(t), torch.from_numpy(ehs),
                     torch.from_numpy(ids)).sample.numpy()
  d = ref['cfg_svd'].unet.addition_time_embed_dim
  # y = [emb(fps_id) | emb(motion) | emb(cond_aug)], the layout of diffusers' add_time_proj.
  y = jnp.concatenate([timestep_embedding(ids[:, i], d) for i in range(3)], -1)
  got = _forward(ref['flax_svd'], _to_rows(sample), jnp.repeat(t, T), jnp.repeat(ehs, T, axis=0),
                 jnp.repeat(y, T, axis=0), jnp.zeros((B, T)), num_frames=T)
  diff = float(np.abs(_from_rows(got, B, T) - want).max())
  print(f'VideoUNet vs diffusers top-level, {num_tokens}-token context: max abs diff {diff:.3e} '
        f'(output std {want.std():.3f})')
  assert diff <= TOL
  assert want.std() > 0.1  # a meaningful comparison, not two near-zero outputs


def _torch_per_row_reference(tm, aux, x, t, ctx, y, ioi, adm):
  """diffusers' UNetSpatioTemporalConditionModel.forward rewritten on B·T rows (sgm interface).

  x (B·T, 8, h, w), t (B·T,), ctx (B·T, L, C), y (B·T, adm + aux), ioi (B, T): time_proj /
  time_embedding / add_embedding run per row; GCD adds aux_label_emb(y[:, adm:]) (docs/reference.md §1.5).
  """
  emb = tm.time_embedding(tm.time_proj(t)) + tm.add_embedding(y[:, :adm])
  if aux is not None:
    emb = emb + aux(y[:, adm:])
  h = tm.conv_in(x)
  res = (h,)
  for blk in tm.down_blocks:
    if getattr(blk, 'has_cross_attention', False):
      h, r = blk(hidden_states=h, temb=emb, encoder_hidden_states=ctx, image_only_indicator=ioi)
    else:
      h, r = blk(hidden_states=h, temb=emb, image_only_indicator=ioi)
    res += r
  h = tm.mid_block(hidden_states=h, temb=emb, encoder_hidden_states=ctx, image_only_indicator=ioi)
  for blk in tm.up_blocks:
    r, res = res[-len(blk.resnets):], res[:-len(blk.resnets)]
    if getattr(blk, 'has_cross_attention', False):
      h = blk(hidden_states=h, temb=emb, res_hidden_states_tuple=r, encoder_hidden_states=ctx,
              image_only_indicator=ioi)
    else:
      h = blk(hidden_states=h, temb=emb, res_hidden_states_tuple=r, image_only_indicator=ioi)
  return tm.conv_out(tm.conv_act(tm.conv_norm_out(h)))


@pytest.mark.parametrize('indicator', ['zeros', 'mixed'])
def test_per_frame_conditioning_matches_reference(ref, indicator):
  """GCD: context, y (incl. the camera slot) and timesteps differ per frame; image-only frames."""
  cfg = ref['cfg_gcd']
  u = cfg.unet
  rng = np.random.default_rng(7)
  n, width = B * T, u.adm_in_channels + u.aux_emb_dim
  x = rng.standard_normal((n, 8, H, W)).astype(np.float32)
  t = rng.uniform(-1.5, 1.5, n).astype(np.float32)
  ctx = rng.standard_normal((n, 3, u.context_dim)).astype(np.float32)
  y = rng.standard_normal((n, width)).astype(np.float32)
  ioi = (np.zeros((B, T)) if indicator == 'zeros' else np.array([[0, 1, 0], [1, 1, 0]])).astype(
      np.float32)
  with torch.no_grad():
    want = _torch_per_row_reference(ref['tm'], ref['aux'], *map(torch.from_numpy, (x, t, ctx, y, ioi)),
                                    adm=u.adm_in_channels).numpy()
  got = _forward(ref['flax_gcd'], jnp.asarray(x.transpose(0, 2, 3, 1)), t, ctx, y, ioi, num_frames=T)
  got = np.asarray(got).transpose(0, 3, 1, 2)
  diff = float(np.abs(got - want).max())
  print(f'VideoUNet per-frame conditioning (GCD aux, image_only_indicator={indicator}): '
        f'max abs diff {diff:.3e} (output std {want.std():.3f})')
  assert diff <= TOL
  # The frames really are conditioned separately: a frame's output depends on its own y row.
  y2 = y.copy()
  y2[1] += 1.0
  got2 = np.asarray(_forward(ref['flax_gcd'], jnp.asarray(x.transpose(0, 2, 3, 1)), t, ctx, y2, ioi,
                             num_frames=T)).transpose(0, 3, 1, 2)
  assert np.abs(got2 - got)[3:].max() == 0.0  # video 1 untouched
  assert np.abs(got2 - got)[1].max() > 1e-3


def test_image_only_indicator_changes_output(ref):
  u = ref['cfg_svd'].unet
  rng = np.random.default_rng(3)
  n = B * T
  args = (jnp.asarray(rng.standard_normal((n, H, W, 8)), jnp.float32), jnp.zeros(n),
          jnp.asarray(rng.standard_normal((n, 1, u.context_dim)), jnp.float32),
          jnp.asarray(rng.standard_normal((n, u.adm_in_channels)), jnp.float32))
  a = _forward(ref['flax_svd'], *args, jnp.zeros((B, T)), num_frames=T)
  b = _forward(ref['flax_svd'], *args, jnp.ones((B, T)), num_frames=T)
  assert float(jnp.abs(a - b).max()) > 1e-2


def test_bad_inputs_raise_clear_errors(ref):
  m = ref['flax_gcd']
  u = ref['cfg_gcd'].unet
  n = B * T
  x = jnp.zeros((n, H, W, 8))
  ctx = jnp.zeros((n, 1, u.context_dim))
  with pytest.raises(ValueError, match='y shape .* aux_emb_dim'):
    m(x, jnp.zeros(n), ctx, jnp.zeros((n, u.adm_in_channels)), num_frames=T)
  with pytest.raises(ValueError, match='whole number of videos'):
    m(x, jnp.zeros(n), ctx, jnp.zeros((n, u.adm_in_channels + u.aux_emb_dim)), num_frames=4)
  with pytest.raises(ValueError, match='not divisible'):
    m(jnp.zeros((n, 7, 8, 8)), jnp.zeros(n), ctx, jnp.zeros((n, u.adm_in_channels + u.aux_emb_dim)),
      num_frames=T)


def _inputs(cfg, seed=0):
  u = cfg.unet
  rng = np.random.default_rng(seed)
  n = B * T
  f = lambda *s: jnp.asarray(rng.standard_normal(s), jnp.float32)  # noqa: E731
  return (f(n, H, W, 8), f(n), f(n, 2, u.context_dim), f(n, u.adm_in_channels + u.aux_emb_dim),
          jnp.zeros((B, T)))


def test_bfloat16_close_to_float32(ref):
  cfg = models.get_config('tiny,eps=diffusers,dtype=bfloat16')
  m16 = layers.abstract_module(_build_unet, cfg)
  nnx.update(m16, nnx.state(ref['flax_gcd'], nnx.Param))
  args = _inputs(cfg)
  out32 = _forward(ref['flax_gcd'], *args, num_frames=T)
  out16 = _forward(m16, *args, num_frames=T)
  assert out16.dtype == jnp.float32 and out16.shape == out32.shape
  assert jax.tree.leaves(nnx.state(m16, nnx.Param))[0].dtype == jnp.float32  # params stay f32
  err = float(jnp.abs(out16 - out32).max() / jnp.abs(out32).max())
  print(f'bf16 vs f32: max abs diff / max |f32| = {err:.3e}')
  assert err < 0.1


@nnx.jit
def _loss_and_grad(module, *a):
  def loss(m):
    return jnp.mean(jnp.square(m(*a[:4], num_frames=T, image_only_indicator=a[4])))
  return nnx.value_and_grad(loss)(module)


def _remat_cfg(remat: str):
  """`tiny` with one ResBlock per level: every block kind that remat wraps (ResBlocks, spatial and temporal
  transformers, down/up samplers, the middle block) at about half the compile time of `tiny`'s three grad
  programs (none, full, dots)."""
  cfg = models.get_config(f'tiny,eps=diffusers,remat={remat}')
  cfg.unet.num_res_blocks = 1
  return cfg


@pytest.fixture(scope='module')
def no_remat_grads():
  """A U-Net with every weight random (zero-init convs included, so every path carries gradient), its loss and
  gradients without remat: compiled once for both remat policies."""
  module = layers.abstract_module(_build_unet, _remat_cfg('none'))  # shapes only; weights from numpy (no compiles)
  leaves, treedef = jax.tree.flatten(nnx.state(module, nnx.Param))
  rng = np.random.default_rng(3)
  nnx.update(module, jax.tree.unflatten(treedef, [jnp.asarray(0.2 * rng.standard_normal(x.shape), x.dtype)
                                                   for x in leaves]))
  return module, _loss_and_grad(module, *_inputs(_remat_cfg('none'), seed=1))


@pytest.mark.parametrize('remat', ['full', 'dots'])
def test_remat_same_output_and_gradients(no_remat_grads, remat):
  base, (l0, g0) = no_remat_grads
  cfg = _remat_cfg(remat)
  mr = layers.abstract_module(_build_unet, cfg)
  nnx.update(mr, nnx.state(base, nnx.Param))
  l1, g1 = _loss_and_grad(mr, *_inputs(cfg, seed=1))
  assert abs(float(l0) - float(l1)) <= 1e-6 * abs(float(l0))
  gmax = max(float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)))
  scale = max(float(jnp.abs(a).max()) for a in jax.tree.leaves(g0))
  print(f'remat={remat}: max grad diff {gmax:.3e} (max |grad| {scale:.3e})')
  assert gmax <= 1e-5 * scale


# ---------------------------------------------------------------------------------------------------
# Full size, abstract (no allocation).

SVD_UNET_PARAMS = 1_524_623_082
AUX_PARAMS = 128 * 1280 + 1280 + 1280 * 1280 + 1280
SPHERICAL_PARAMS = 13 * 128 + 128


def _count(module) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(module, nnx.Param)))


def test_full_size_param_counts_and_names_match_diffusers():
  from diffusers import UNetSpatioTemporalConditionModel  # pylint: disable=g-import-not-at-top
  from gcd_jax.models.gcd import GCDNetwork  # pylint: disable=g-import-not-at-top
  svd = models.get_config('svd')
  unet = layers.abstract_module(_build_unet, svd)  # shapes only, no RNG tracing
  assert _count(unet) == SVD_UNET_PARAMS
  net = layers.abstract_module(lambda c, rngs: GCDNetwork(c, rngs=rngs), models.get_config('gcd'))
  assert _count(net.unet) == SVD_UNET_PARAMS + AUX_PARAMS
  assert _count(net.camera_embedder) == SPHERICAL_PARAMS
  assert _count(net) == SVD_UNET_PARAMS + AUX_PARAMS + SPHERICAL_PARAMS

  with torch.device('meta'):
    tm = UNetSpatioTemporalConditionModel(**diffusers_unet_config(svd))
  torch_shapes = {k: tuple(v.shape) for k, v in tm.state_dict().items()}
  ours = {k: s.torch_shape for k, s in leaf_specs(unet).items()}
  assert len(ours) == 1428
  assert ours == torch_shapes
  gcd_keys = set(leaf_specs(net.unet)) - set(ours)
  assert gcd_keys == {f'aux_label_emb.linear_{i}.{w}' for i in (1, 2) for w in ('weight', 'bias')}
