"""Temporal VAE vs diffusers `AutoencoderKLTemporalDecoder` (tiny config, every parameter randomised).

Checks: encode mean/logvar with and without quant_conv, temporal decode of whole videos (B=2, T=3),
chunked decode vs diffusers' `decode_chunk_size` loop (SVD pipeline `decode_latents`), that chunking
changes the result, posterior helpers and GCD's two encoder paths, loading a `save_pretrained` folder,
jit, bf16, and the exact full-size `svd` parameter tree (97,742,847) against diffusers on meta.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from gcd_jax.models import presets as models
from gcd_jax.convert.diffusers import load_diffusers_component
from gcd_jax.convert.torch_layout import leaf_specs, load_torch_state
from gcd_jax.models import vae as vae_lib
from tests.fixtures_vae_clip import max_abs, nhwc, randomise_all_, state_numpy

TOL = 1e-4


@pytest.fixture(scope='module')
def ref(tmp_path_factory):
  from diffusers import AutoencoderKLTemporalDecoder  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  cfg = models.get_config('tiny')
  tm = randomise_all_(AutoencoderKLTemporalDecoder(**vae_lib.diffusers_vae_config(cfg)), seed=1)
  # Abstract build + load: no random init to run (the test box is a loaded 2-core CPU).
  ours = nnx.eval_shape(lambda: vae_lib.build_vae(cfg, nnx.Rngs(0)))
  load_torch_state(ours, state_numpy(tm))
  folder = tmp_path_factory.mktemp('vae_folder') / 'vae'
  tm.save_pretrained(folder)
  g = torch.Generator().manual_seed(2)
  images = torch.rand(4, 3, 16, 24, generator=g) * 2 - 1
  z = torch.randn(10, 4, 4, 6, generator=g)
  return dict(cfg=cfg, tm=tm, ours=ours, folder=folder, images=images, z=z)


def test_encode_with_quant_conv_matches_diffusers(ref):
  with torch.no_grad():
    dist = ref['tm'].encode(ref['images']).latent_dist
  mean, logvar = ref['ours'].encode(jnp.asarray(nhwc(ref['images'])), use_quant_conv=True)
  assert mean.shape == logvar.shape == (4, 8, 12, 4) and mean.dtype == jnp.float32
  d_mean, d_logvar = max_abs(mean, nhwc(dist.mean)), max_abs(logvar, nhwc(dist.logvar))
  print(f'VAE encode (quant_conv): max|Δmean| {d_mean:.2e}, max|Δlogvar| {d_logvar:.2e} '
        f'(|mean| max {np.abs(nhwc(dist.mean)).max():.2f})')
  assert d_mean <= TOL and d_logvar <= TOL


def test_encode_without_quant_conv_is_the_encoder_output(ref):
  """GCD's target path (sgm first_stage_model has no quant_conv): moments straight from the encoder."""
  with torch.no_grad():
    moments = ref['tm'].encoder(ref['images'])
  t_mean, t_logvar = torch.chunk(moments, 2, dim=1)
  mean, logvar = ref['ours'].encode(jnp.asarray(nhwc(ref['images'])), use_quant_conv=False)
  d_mean, d_logvar = max_abs(mean, nhwc(t_mean)), max_abs(logvar, nhwc(t_logvar.clamp(-30, 20)))
  print(f'VAE encode (no quant_conv): max|Δmean| {d_mean:.2e}, max|Δlogvar| {d_logvar:.2e}')
  assert d_mean <= TOL and d_logvar <= TOL
  # quant_conv is randomised, so the two paths really differ.
  mean_q, _ = ref['ours'].encode(jnp.asarray(nhwc(ref['images'])), use_quant_conv=True)
  assert max_abs(mean, mean_q) > 1e-2


# One jitted decode for all cases (num_frames / chunk_size are static): faster than op-by-op eager on a
# loaded CPU, and it checks that the chunked path (lax.map over chunks) traces under jit.
_decode = nnx.jit(lambda m, z, t, c: m.decode(z, num_frames=t, chunk_size=c), static_argnums=(2, 3))


def test_decode_whole_videos_matches_diffusers(ref):
  z = ref['z'][:6]  # B=2 videos × T=3 frames, frames inner
  with torch.no_grad():
    expected = ref['tm'].decode(z, num_frames=3).sample
  out = _decode(ref['ours'], jnp.asarray(nhwc(z)), 3, None)
  assert out.shape == (6, 8, 12, 3) and out.dtype == jnp.float32
  d = max_abs(out, nhwc(expected))
  print(f'VAE temporal decode B=2 T=3: max|Δ| {d:.2e} (output max {expected.abs().max():.2f})')
  assert d <= TOL
  ref['whole_b2_t3'] = out


def _diffusers_chunked(tm, z, chunk):
  """SVD pipeline `decode_latents`: flat rows in chunks, each decoded as one video of its length."""
  with torch.no_grad():
    return torch.cat([tm.decode(z[i:i + chunk], num_frames=len(z[i:i + chunk])).sample
                      for i in range(0, len(z), chunk)])


@pytest.mark.parametrize('b,t,chunk', [(1, 5, 2), (2, 4, 2)])
def test_chunked_decode_matches_diffusers_decode_chunk_size(ref, b, t, chunk):
  """B=1 T=5 chunk 2: two full chunks (lax.map) + a 1-frame remainder; B=2 T=4: chunks per video."""
  z = ref['z'][:b * t]
  expected = _diffusers_chunked(ref['tm'], z, chunk)
  out = _decode(ref['ours'], jnp.asarray(nhwc(z)), t, chunk)
  d = max_abs(out, nhwc(expected))
  print(f'VAE chunked decode B={b} T={t} chunk={chunk}: max|Δ| vs diffusers loop {d:.2e}')
  assert d <= TOL


def test_chunking_changes_the_result(ref):
  """Temporal convs only see the frames of one chunk (sgm decoding_t): chunked ≠ whole videos.

  B=2, T=3, chunk 2: chunks are taken per video ([t0 t1] [t2] of each video), i.e. the diffusers loop
  run on each video separately (the flat-row loop would put video 0's t2 and video 1's t0 together).
  """
  z = ref['z'][:6]
  if 'whole_b2_t3' not in ref:
    ref['whole_b2_t3'] = _decode(ref['ours'], jnp.asarray(nhwc(z)), 3, None)
  chunked = _decode(ref['ours'], jnp.asarray(nhwc(z)), 3, 2)
  d = max_abs(chunked, ref['whole_b2_t3'])
  print(f'VAE decode B=2 T=3, chunk 2 vs whole videos: max|Δ| {d:.2e}')
  assert d > 1e-2
  expected = torch.cat([_diffusers_chunked(ref['tm'], z[3 * v:3 * v + 3], 2) for v in range(2)])
  d_ref = max_abs(chunked, nhwc(expected))
  print(f'VAE decode B=2 T=3 chunk 2 vs per-video diffusers loop: max|Δ| {d_ref:.2e}')
  assert d_ref <= TOL


def test_posterior_helpers_and_gcd_paths(ref):
  mean = jnp.asarray([[0.5, -1.0, 2.0]])
  logvar = jnp.asarray([[0.0, 2.0, 100.0]])  # 100 is clamped to 20 (std e^10)
  key = jax.random.key(7)
  eps = jax.random.normal(key, mean.shape)
  expected = mean + jnp.exp(0.5 * jnp.asarray([[0.0, 2.0, 20.0]])) * eps
  np.testing.assert_allclose(vae_lib.posterior_sample(mean, logvar, key), expected, rtol=1e-6)
  assert (vae_lib.posterior_mode(mean, logvar) == mean).all()

  ours, x = ref['ours'], jnp.asarray(nhwc(ref['images']))
  m_q, _ = ours.encode(x, use_quant_conv=True)
  m_n, lv_n = ours.encode(x, use_quant_conv=False)
  # Conditioning latents: quant_conv, mode, unscaled (docs/reference.md §6 item 4).
  assert max_abs(vae_lib.encode_conditioning(ours, x), m_q) == 0.0
  # Target latents: no quant_conv, posterior sample × 0.18215.
  key = jax.random.key(3)
  target = vae_lib.encode_target(ours, x, key)
  np.testing.assert_allclose(target, 0.18215 * vae_lib.posterior_sample(m_n, lv_n, key), rtol=1e-6,
                             atol=1e-7)


def test_load_from_save_pretrained_folder(ref):
  """diffusers `vae/` folder (config.json + safetensors) → abstract module → same outputs."""
  abstract = nnx.eval_shape(lambda: vae_lib.build_vae(ref['cfg'], nnx.Rngs(0)))
  load_diffusers_component(ref['folder'], abstract)
  x = jnp.asarray(nhwc(ref['images'][:2]))
  assert max_abs(abstract.encode(x)[0], ref['ours'].encode(x)[0]) == 0.0
  flat = lambda m: jax.tree.leaves(nnx.state(m, nnx.Param))  # pylint: disable=unnecessary-lambda-assignment
  assert all(bool((a == b).all()) for a, b in zip(flat(abstract), flat(ref['ours'])))


def test_bfloat16_compute_stays_close(ref):
  cfg = models.get_config('tiny,dtype=bfloat16')
  ours16 = nnx.eval_shape(lambda: vae_lib.build_vae(cfg, nnx.Rngs(0)))
  nnx.update(ours16, nnx.state(ref['ours'], nnx.Param))
  x = jnp.asarray(nhwc(ref['images']))
  m32, _ = ref['ours'].encode(x)
  m16, _ = ours16.encode(x)
  assert m16.dtype == jnp.float32
  rel = max_abs(m16, m32) / float(jnp.abs(m32).max())
  print(f'VAE encode bf16 vs f32: max relative diff {rel:.2e}')
  assert rel < 5e-2


def test_bad_inputs_raise_clear_errors(ref):
  ours = ref['ours']
  with pytest.raises(ValueError, match='whole number of videos'):
    ours.decode(jnp.zeros((5, 4, 6, 4)), num_frames=3)
  with pytest.raises(ValueError, match='latents'):
    ours.decode(jnp.zeros((3, 4, 6, 8)), num_frames=3)
  with pytest.raises(ValueError, match='chunk_size'):
    ours.decode(jnp.zeros((3, 4, 6, 4)), num_frames=3, chunk_size=0)
  with pytest.raises(ValueError, match='channels-last'):
    ours.encode(jnp.zeros((1, 3, 32, 32)))


def test_full_size_svd_vae_tree_matches_diffusers():
  from diffusers import AutoencoderKLTemporalDecoder  # pylint: disable=g-import-not-at-top
  cfg = models.get_config('svd')
  abstract = nnx.eval_shape(lambda: vae_lib.build_vae(cfg, nnx.Rngs(0)))
  n = sum(math.prod(x.shape) for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
  assert n == 97_742_847
  with torch.device('meta'):
    tm = AutoencoderKLTemporalDecoder(
        block_out_channels=(128, 256, 512, 512), down_block_types=('DownEncoderBlock2D',) * 4,
        layers_per_block=2, latent_channels=4)
  theirs = {k: tuple(v.shape) for k, v in tm.state_dict().items()}
  ours = {k: s.torch_shape for k, s in leaf_specs(abstract).items()}
  assert ours == theirs


@pytest.mark.slow
def test_remat_chunked_decode_gradients(ref):
  """cfg.remat='full' (nnx.remat per block) inside the lax.map over chunks: same values, finite grads."""
  cfg = models.get_config('tiny,remat=full')
  remat = nnx.eval_shape(lambda: vae_lib.build_vae(cfg, nnx.Rngs(0)))
  nnx.update(remat, nnx.state(ref['ours'], nnx.Param))
  z = jnp.asarray(nhwc(ref['z'][:4]))

  def loss(m, x):
    return jnp.mean(m.decode(x, num_frames=4, chunk_size=2) ** 2)

  value, grads = nnx.jit(nnx.value_and_grad(loss))(remat, z)
  expected = jnp.mean(_decode(ref['ours'], z, 4, 2) ** 2)
  assert abs(float(value) - float(expected)) <= 1e-5 * float(expected)
  leaves = jax.tree.leaves(grads)
  assert all(bool(jnp.isfinite(g).all()) for g in leaves)
  assert float(jnp.abs(grads.decoder.up_blocks[0].resnets[0].time_mixer.mix_factor[...]).sum()) > 0
