"""Conditioner (docs/reference.md §1.3, §1.6, §1.7): per-frame CLIP/VAE conditioning, vector sinusoids, camera
kept separate, per-frame independent CFG dropout, unconditional branch, target latents."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gcd_jax.models import presets as models
from gcd_jax.diffusion.conditioner import (Conditioner, append_camera, ucg_dropout, unconditional,
                                           vector_conditioning)
from gcd_jax.diffusion.config import diffusion_config
from gcd_jax.diffusion.denoiser import denoise
from gcd_jax.models.clip import build_clip, preprocess_frames_for_clip
from gcd_jax.models.gcd import build_gcd_network
from gcd_jax.models.vae import build_vae
from tests.fixtures_diffusion import random_tiny, tiny_batch

B, T, HW = 2, 3, (16, 16)


@pytest.fixture(scope='module')
def tiny():
  cfg = models.get_config('tiny')
  vae = random_tiny(build_vae, cfg, 1)
  clip = random_tiny(build_clip, cfg, 2)
  net = random_tiny(build_gcd_network, cfg, 3)
  return dict(cfg=cfg, vae=vae, clip=clip, net=net, cond=Conditioner(cfg, vae, clip))


# --- dropout statistics (pure function, no model) -----------------------------------------------

def _ones_cond(n):
  return dict(crossattn=jnp.ones((n, 1, 2)), concat=jnp.ones((n, 2, 2, 1)), vector=jnp.ones((n, 3)),
              camera=jnp.ones((n, 3)))


def test_dropout_rate_per_frame_and_independence():
  """n = 140 000 rows (10 000 videos × 14 frames). Per-embedder drop rate 0.1 ± 5·SE with SE =
  √(0.1·0.9/n) = 8.0e-4; joint drop 0.01 ± 5·√(0.0099/n) (independent embedders; a shared mask would
  give 0.1); adjacent frames both dropped 0.01 (per-frame, not per-video masks); fraction of videos with
  mixed keep/drop frames 1 − 0.9¹⁴ − 0.1¹⁴ = 0.771 ± 5·√(p(1−p)/10 000) (per-video dropout gives 0)."""
  videos, t = 10_000, 14
  n = videos * t
  out = jax.jit(lambda k: ucg_dropout(_ones_cond(n), k, 0.1, 0.1))(jax.random.key(0))
  drop_c = np.asarray(out['crossattn'][:, 0, 0]) == 0
  drop_v = np.asarray(out['concat'][:, 0, 0, 0]) == 0
  # whole rows are zeroed, nothing else touched
  assert np.all(np.asarray(out['crossattn'])[drop_c] == 0) and np.all(np.asarray(out['crossattn'])[~drop_c] == 1)
  assert np.all(np.asarray(out['vector']) == 1) and np.all(np.asarray(out['camera']) == 1)
  se = math.sqrt(0.09 / n)
  rates = dict(crossattn=drop_c.mean(), concat=drop_v.mean(), joint=(drop_c & drop_v).mean())
  print(f'dropout rates over {n} rows: {rates} (SE {se:.1e})')
  assert abs(rates['crossattn'] - 0.1) < 5 * se and abs(rates['concat'] - 0.1) < 5 * se
  assert abs(rates['joint'] - 0.01) < 5 * math.sqrt(0.01 * 0.99 / n)
  dv = drop_c.reshape(videos, t)
  both_adjacent = (dv[:, :-1] & dv[:, 1:]).mean()
  assert abs(both_adjacent - 0.01) < 5 * math.sqrt(0.0099 / (videos * (t - 1)))
  mixed = (dv.any(1) & ~dv.all(1)).mean()
  p = 1 - 0.9 ** t - 0.1 ** t
  assert abs(mixed - p) < 5 * math.sqrt(p * (1 - p) / videos), mixed
  # zero rate → untouched
  same = ucg_dropout(_ones_cond(10), jax.random.key(1), 0.0, 0.0)
  assert all(np.all(np.asarray(v) == 1) for v in same.values())


def test_unconditional_and_append_camera():
  rng = np.random.default_rng(0)
  cond = dict(crossattn=jnp.asarray(rng.standard_normal((4, 1, 5))),
              concat=jnp.asarray(rng.standard_normal((4, 2, 2, 4))),
              vector=jnp.asarray(rng.standard_normal((4, 6))), camera=jnp.ones((4, 3)))
  uc = unconditional(cond)
  assert np.all(np.asarray(uc['crossattn']) == 0) and np.all(np.asarray(uc['concat']) == 0)
  np.testing.assert_array_equal(uc['vector'], cond['vector'])  # §6 item 3
  np.testing.assert_array_equal(uc['camera'], cond['camera'])
  cam = jnp.asarray(rng.standard_normal((4, 2)), jnp.float32)
  full = append_camera(cond, cam)
  np.testing.assert_allclose(full['vector'][:, :6], cond['vector'], rtol=1e-6)
  np.testing.assert_allclose(full['vector'][:, 6:], cam)  # camera in the LAST columns (§1.5)


def test_vector_sinusoids_hand_values():
  batch = dict(fps_id=jnp.asarray([12, 6]), motion_bucket_id=jnp.asarray([127, 0]),
               cond_aug=jnp.asarray([0.02, 0.02]))
  v = np.asarray(vector_conditioning(batch, 8))
  assert v.shape == (2, 24)
  freqs = np.exp(-math.log(10000) * np.arange(4) / 4)
  for j, key in enumerate(('fps_id', 'motion_bucket_id', 'cond_aug')):
    val = np.asarray(batch[key], np.float64)[:, None] * freqs
    np.testing.assert_allclose(v[:, 8 * j:8 * j + 8], np.concatenate([np.cos(val), np.sin(val)], 1),
                               atol=2e-5)
  with pytest.raises(ValueError, match='cond_aug'):
    vector_conditioning(dict(fps_id=jnp.ones(2), motion_bucket_id=jnp.ones(2)), 8)


# --- with the real tiny modules ------------------------------------------------------------------

def test_conditioner_real_tiny(tiny):
  cfg, vae, clip, net, conditioner = (tiny[k] for k in ('cfg', 'vae', 'clip', 'net', 'cond'))
  batch = tiny_batch(cfg, B, T, HW)
  n = B * T
  key = jax.random.key(7)

  @nnx.jit
  def run(conditioner, vae, clip, batch):
    cond = conditioner(batch)
    refs = dict(
        clip=clip(preprocess_frames_for_clip(batch['cond_frames_without_noise'], cfg.clip.image_size)),
        mean_q=vae.encode(batch['cond_frames'], use_quant_conv=True)[0],
        mean_nq=vae.encode(batch['cond_frames'], use_quant_conv=False)[0],
        target=vae.encode(batch['jpg'], use_quant_conv=False),
        z=conditioner.encode_target(batch['jpg'], key),
        dropped=conditioner(batch, key=jax.random.key(3), ucg_rate_crossattn=0.5, ucg_rate_concat=0.5))
    return cond, refs

  cond, refs = run(conditioner, vae, clip, batch)
  f = vae.downsample_factor
  assert cond['crossattn'].shape == (n, 1, cfg.clip.projection_dim)
  assert cond['concat'].shape == (n, HW[0] // f, HW[1] // f, 4)
  assert cond['vector'].shape == (n, 3 * cfg.unet.addition_time_embed_dim)
  np.testing.assert_array_equal(cond['camera'], batch['scaled_relative_angles'])
  # crossattn = CLIP of the CLEAN frames, one per frame (§6 item 2)
  want_clip = refs['clip']
  np.testing.assert_allclose(cond['crossattn'][:, 0], want_clip, atol=1e-5)
  assert float(jnp.abs(cond['crossattn'][0] - cond['crossattn'][1]).max()) > 1e-3  # frames differ
  # concat = posterior MODE of the NOISY frames, WITH quant_conv, scale 1 (§6 item 4)
  mean_q, mean_nq = refs['mean_q'], refs['mean_nq']
  np.testing.assert_allclose(cond['concat'], mean_q, atol=1e-5)
  assert float(jnp.abs(mean_q - mean_nq).max()) > 1e-2  # quant_conv matters with random weights
  np.testing.assert_allclose(cond['vector'], vector_conditioning(batch, cfg.unet.addition_time_embed_dim),
                             atol=1e-6)
  # target latents: NO quant_conv, posterior SAMPLE × 0.18215
  z = refs['z']
  mean_t, logvar_t = refs['target']
  eps = jax.random.normal(key, mean_t.shape)
  np.testing.assert_allclose(z, (mean_t + jnp.exp(0.5 * logvar_t) * eps) * 0.18215, atol=1e-5)
  # dropout through the conditioner: rows zeroed, others equal
  dropped = refs['dropped']
  rows = np.asarray(jnp.abs(dropped['crossattn']).max(axis=(1, 2))) == 0
  assert 0 < rows.sum() < n
  np.testing.assert_allclose(dropped['crossattn'][~rows], cond['crossattn'][~rows], atol=1e-6)
  # the assembled y has the U-Net's width (adm_in + aux); the sampler tests run the U-Net on it
  full = append_camera(cond, net.embed_camera(cond['camera']))
  assert full['vector'].shape == (n, cfg.unet.adm_in_channels + cfg.unet.aux_emb_dim)


def test_conditioner_pose_and_no_camera():
  for preset, key, width in (('tiny_svd', None, 0), ('gcd_pose', 'scaled_relative_pose', None)):
    cfg = models.get_config('tiny') if preset == 'gcd_pose' else models.get_config(preset)
    if preset == 'gcd_pose':
      cfg.camera.embedder = 'pose'
    c = Conditioner(cfg, vae=None, clip=None)
    assert c.camera_key == key
  cfg = models.get_config('tiny')
  c = Conditioner(cfg, vae=None, clip=None)
  batch = tiny_batch(cfg, 1, 2, HW)
  del batch['scaled_relative_angles']
  with pytest.raises(ValueError, match='scaled_relative_angles'):
    c(batch)


def test_training_loss_grad_flows_into_camera_embedder(tiny):
  """The documented training composition (loss.py docstring) under nnx.value_and_grad: the camera
  embedder, appended inside the differentiated function, receives a gradient. The U-Net is replaced by
  a linear read-out of (x_in, y) to keep the test fast (the train tests differentiate the real one)."""
  from gcd_jax.diffusion.loss import diffusion_loss  # pylint: disable=g-import-not-at-top
  from gcd_jax.diffusion.sigmas import training_sigmas  # pylint: disable=g-import-not-at-top
  cfg, net, conditioner = tiny['cfg'], tiny['net'], tiny['cond']
  dcfg = diffusion_config()
  batch = tiny_batch(cfg, B, T, HW, seed=1)
  k1, k2, k3, k4 = jax.random.split(jax.random.key(0), 4)
  cond, z = nnx.jit(lambda c, b: (c(b, key=k1), c.encode_target(b['jpg'], k2)))(conditioner, batch)
  sigma = training_sigmas(k3, z.shape[0], T, dcfg)
  noise = jax.random.normal(k4, z.shape)

  @nnx.jit
  def step(net, cond, z, sigma, noise, step):
    def loss_fn(net):
      c = append_camera(cond, net.embed_camera(cond['camera']))
      def network_fn(x_in, c_noise, context, y, num_frames):
        del context, num_frames
        return x_in[..., :4] * c_noise[:, None, None, None] + y[:, -4:][:, None, None, :]
      fn = lambda x, s: denoise(network_fn, x, s, c, T, dcfg.sigma_data)
      return diffusion_loss(fn, z, sigma, noise, step, dcfg)
    return nnx.value_and_grad(loss_fn, has_aux=True)(net)

  (loss, aux), grads = step(net, cond, z, sigma, noise, jnp.int32(100))
  assert np.isfinite(float(loss)) and aux['loss_per_row'].shape == (B * T,)
  g = float(jnp.abs(grads.camera_embedder.proj.kernel.get_value()).max())
  assert g > 0
