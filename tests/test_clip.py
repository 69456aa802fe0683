"""CLIP image tower vs transformers `CLIPVisionModelWithProjection`, and GCD's CLIP preprocessing.

Checks: tower parity (tiny config, 'gelu' and 'quick_gelu', every parameter randomised), loading a
`save_pretrained` folder, config from `image_encoder/config.json`, the bicubic align_corners resize vs
torch F.interpolate, kornia's antialias blur vs a hand-written torch reference of kornia's algorithm
(and vs kornia itself when installed), the full preprocessing at GCD's 256×384 → 224, and the exact
full-size ViT-H/14 parameter tree against transformers on meta.
"""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flax import nnx

from gcd_jax.models import presets as models
from gcd_jax.convert.diffusers import load_diffusers_component
from gcd_jax.convert.torch_layout import leaf_specs, load_torch_state
from gcd_jax.models import clip as clip_lib
from tests.fixtures_vae_clip import max_abs, nhwc, randomise_all_, state_numpy

TOL = 1e-4


def _hf_config(c):
  from transformers import CLIPVisionConfig  # pylint: disable=g-import-not-at-top
  return CLIPVisionConfig(
      hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
      num_hidden_layers=c.num_layers, num_attention_heads=c.num_heads, image_size=c.image_size,
      patch_size=c.patch_size, projection_dim=c.projection_dim, hidden_act=c.hidden_act,
      layer_norm_eps=c.layer_norm_eps)


def _pair(act: str, seed: int):
  from transformers import CLIPVisionModelWithProjection  # pylint: disable=g-import-not-at-top
  cfg = models.get_config('tiny')
  cfg.clip.hidden_act = act
  tm = randomise_all_(CLIPVisionModelWithProjection(_hf_config(cfg.clip)), seed)
  ours = nnx.eval_shape(lambda: clip_lib.build_clip(cfg, nnx.Rngs(0)))
  load_torch_state(ours, state_numpy(tm))
  return cfg, tm, ours


@pytest.fixture(scope='module')
def ref(tmp_path_factory):
  cfg, tm, ours = _pair('gelu', seed=5)
  folder = tmp_path_factory.mktemp('clip_folder') / 'image_encoder'
  tm.save_pretrained(folder)
  g = torch.Generator().manual_seed(6)
  pixels = torch.randn(3, 3, cfg.clip.image_size, cfg.clip.image_size, generator=g)
  return dict(cfg=cfg, tm=tm, ours=ours, folder=folder, pixels=pixels)


def test_tower_matches_transformers_gelu(ref):
  assert ref['cfg'].clip.hidden_act == 'gelu' and ref['cfg'].clip.layer_norm_eps == 1e-5
  with torch.no_grad():
    expected = ref['tm'](pixel_values=ref['pixels']).image_embeds
  out = ref['ours'](jnp.asarray(nhwc(ref['pixels'])))
  assert out.shape == (3, ref['cfg'].clip.projection_dim) and out.dtype == jnp.float32
  d = max_abs(out, expected)
  print(f'CLIP tower (gelu): max|Δ| {d:.2e} (|embeds| max {expected.abs().max():.2f})')
  assert d <= TOL


def test_tower_matches_transformers_quick_gelu(ref):
  _, tm, ours = _pair('quick_gelu', seed=7)
  with torch.no_grad():
    expected = tm(pixel_values=ref['pixels']).image_embeds
  d = max_abs(ours(jnp.asarray(nhwc(ref['pixels']))), expected)
  print(f'CLIP tower (quick_gelu): max|Δ| {d:.2e}')
  assert d <= TOL


def test_load_from_save_pretrained_folder(ref):
  abstract = nnx.eval_shape(lambda: clip_lib.build_clip(ref['cfg'], nnx.Rngs(0)))
  load_diffusers_component(ref['folder'], abstract, ignore=('*.position_ids',))
  flat = lambda m: jax.tree.leaves(nnx.state(m, nnx.Param))  # pylint: disable=unnecessary-lambda-assignment
  assert all(bool((a == b).all()) for a, b in zip(flat(abstract), flat(ref['ours'])))


def test_config_from_image_encoder_json(ref, tmp_path):
  got = clip_lib.clip_config_from_transformers(ref['folder'])
  assert got.to_dict() == ref['cfg'].clip.to_dict()
  # Omitted fields take transformers' CLIPVisionConfig defaults (quick_gelu, patch 32, ...).
  (tmp_path / 'config.json').write_text(json.dumps({'hidden_size': 64, 'num_attention_heads': 4}))
  sparse = clip_lib.clip_config_from_transformers(tmp_path / 'config.json')
  assert (sparse.hidden_size, sparse.hidden_act, sparse.patch_size, sparse.num_layers) == (
      64, 'quick_gelu', 32, 12)
  # A full CLIPConfig: its vision_config is used.
  (tmp_path / 'full.json').write_text(json.dumps({'model_type': 'clip', 'vision_config': {
      'hidden_size': 1280, 'num_attention_heads': 16, 'hidden_act': 'gelu', 'patch_size': 14}}))
  full = clip_lib.clip_config_from_transformers(tmp_path / 'full.json')
  assert (full.hidden_size, full.hidden_act, full.patch_size) == (1280, 'gelu', 14)
  (tmp_path / 'bad.json').write_text(json.dumps({'hidden_size': 1280}))  # 12 heads by default
  with pytest.raises(ValueError, match='bad.json'):
    clip_lib.clip_config_from_transformers(tmp_path / 'bad.json')
  with pytest.raises(FileNotFoundError, match='image_encoder'):
    clip_lib.clip_config_from_transformers(tmp_path / 'missing')


def test_wrong_input_size_raises(ref):
  with pytest.raises(ValueError, match='preprocess_frames_for_clip'):
    ref['ours'](jnp.zeros((1, 40, 40, 3)))


# --------------------------------------------------------------------------------------------------
# Preprocessing


def _kornia_reference(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
  """Hand-written torch reference of kornia.geometry.resize(bicubic, align_corners=True, antialias=True)
  (kornia 0.6.9 `resize` / `gaussian_blur2d` / `filter2d`, reflect border, x pass then y pass)."""
  h, w = x.shape[-2:]
  if (h, w) == tuple(size):
    return x
  factors = (h / size[0], w / size[1])
  if max(factors) > 1:
    sigmas = (max((factors[0] - 1.0) / 2.0, 0.001), max((factors[1] - 1.0) / 2.0, 0.001))
    ks = [int(max(2.0 * 2 * s, 3)) for s in sigmas]
    ks = [k + 1 if k % 2 == 0 else k for k in ks]

    def kernel(k, s):
      t = torch.arange(k, dtype=torch.float32) - k // 2
      g = torch.exp(-(t ** 2.0) / (2 * s ** 2))
      return g / g.sum()

    c = x.shape[1]
    kx = kernel(ks[1], sigmas[1]).view(1, 1, 1, -1).expand(c, 1, 1, -1)
    ky = kernel(ks[0], sigmas[0]).view(1, 1, -1, 1).expand(c, 1, -1, 1)
    px, py = (ks[1] - 1) // 2, (ks[0] - 1) // 2
    x = F.conv2d(F.pad(x, (px, ks[1] - 1 - px, 0, 0), mode='reflect'), kx, groups=c)
    x = F.conv2d(F.pad(x, (0, 0, py, ks[0] - 1 - py), mode='reflect'), ky, groups=c)
  return F.interpolate(x, size=size, mode='bicubic', align_corners=True)


SIZES = [(256, 384, 224), (40, 60, 32), (20, 30, 32), (31, 17, 9), (32, 32, 32)]


@pytest.fixture(scope='module')
def frames():
  g = torch.Generator().manual_seed(8)
  return {hw: torch.rand(2, 3, *hw, generator=g) * 2 - 1 for hw in {(h, w) for h, w, _ in SIZES}}


@pytest.mark.parametrize('h,w,s', SIZES)
def test_bicubic_align_corners_matches_torch(frames, h, w, s):
  x = frames[(h, w)]
  expected = F.interpolate(x, size=(s, s), mode='bicubic', align_corners=True)
  d = max_abs(clip_lib.resize_bicubic(jnp.asarray(nhwc(x)), (s, s), antialias=False), nhwc(expected))
  print(f'bicubic align_corners {h}×{w}→{s}: max|Δ| {d:.2e}')
  assert d <= 1e-5


@pytest.mark.parametrize('h,w,s', SIZES)
def test_antialias_resize_matches_kornia_reference(frames, h, w, s):
  x = frames[(h, w)]
  expected = _kornia_reference(x, (s, s))
  d = max_abs(clip_lib.resize_bicubic(jnp.asarray(nhwc(x)), (s, s), antialias=True), nhwc(expected))
  print(f'antialias resize {h}×{w}→{s} vs torch reference of kornia: max|Δ| {d:.2e}')
  assert d <= 1e-5


def test_antialias_resize_matches_kornia_itself(frames):
  kornia = pytest.importorskip('kornia')
  for h, w, s in SIZES:
    x = frames[(h, w)]
    expected = kornia.geometry.resize(x, (s, s), interpolation='bicubic', align_corners=True,
                                      antialias=True)
    assert max_abs(_kornia_reference(x, (s, s)), expected) <= 1e-6
    d = max_abs(clip_lib.resize_bicubic(jnp.asarray(nhwc(x)), (s, s)), nhwc(expected))
    print(f'antialias resize {h}×{w}→{s} vs kornia {kornia.__version__}: max|Δ| {d:.2e}')
    assert d <= 1e-5


def test_preprocess_frames_for_clip_gcd_size(frames):
  x = frames[(256, 384)]
  mean = torch.tensor(clip_lib.CLIP_MEAN).view(1, 3, 1, 1)
  std = torch.tensor(clip_lib.CLIP_STD).view(1, 3, 1, 1)
  expected = ((_kornia_reference(x, (224, 224)) + 1.0) / 2.0 - mean) / std
  out = clip_lib.preprocess_frames_for_clip(jnp.asarray(nhwc(x)), 224)
  assert out.shape == (2, 224, 224, 3)
  d = max_abs(out, nhwc(expected))
  print(f'GCD CLIP preprocessing 256×384→224: max|Δ| {d:.2e}')
  assert d <= 1e-5
  with pytest.raises(ValueError, match='frames'):
    clip_lib.preprocess_frames_for_clip(jnp.zeros((1, 3, 32, 32)))


def test_resize_matrices_hand_values():
  # Every output pixel is a convex-ish combination: rows sum to 1; align_corners keeps the corners.
  m = clip_lib.bicubic_matrix(7, 4)
  np.testing.assert_allclose(m.sum(1), 1.0, atol=1e-12)
  assert m[0, 0] == 1.0 and m[-1, -1] == 1.0
  # 7 → 4: source positions 0, 2, 4, 6 are integers, so the resize picks pixels exactly.
  np.testing.assert_allclose(m, np.eye(7)[[0, 2, 4, 6]], atol=1e-12)
  # kornia's rule at GCD's size: 256 → 224 gives σ = 1/14, kernel 3; 384 → 224 σ = 5/14, kernel 3.
  assert clip_lib.kornia_antialias_sigma_and_size(256, 224) == pytest.approx((1 / 14, 3))
  assert clip_lib.kornia_antialias_sigma_and_size(384, 224) == pytest.approx((5 / 14, 3))
  # 1024 → 224: σ = 1.786, int(4σ) = 7 (odd already); 512 → 224: σ = 0.643, int(2.57) → 3; 896 → 224:
  # σ = 1.5, int(6.0) = 6 → made odd: 7.
  assert clip_lib.kornia_antialias_sigma_and_size(1024, 224)[1] == 7
  assert clip_lib.kornia_antialias_sigma_and_size(512, 224)[1] == 3
  assert clip_lib.kornia_antialias_sigma_and_size(896, 224) == pytest.approx((1.5, 7))


def test_full_size_vit_h14_tree_matches_transformers():
  from transformers import CLIPVisionModelWithProjection  # pylint: disable=g-import-not-at-top
  cfg = models.get_config('svd')
  abstract = nnx.eval_shape(lambda: clip_lib.build_clip(cfg, nnx.Rngs(0)))
  n = sum(math.prod(x.shape) for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
  print(f'CLIP ViT-H/14 image tower + projection: {n:,} parameters')
  assert n == 632_076_800
  with torch.device('meta'):
    tm = CLIPVisionModelWithProjection(_hf_config(cfg.clip))
  theirs = {k: tuple(v.shape) for k, v in tm.state_dict().items()}
  ours = {k: s.torch_shape for k, s in leaf_specs(abstract).items()}
  assert ours == theirs
