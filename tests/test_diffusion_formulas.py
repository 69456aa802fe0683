"""GCD diffusion formulas vs hand-computed values (docs/reference.md §2.1–2.4, Appendix B)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gcd_jax.diffusion import loss as dloss
from gcd_jax.diffusion.config import diffusion_config
from gcd_jax.diffusion.denoiser import denoise, network_input, vscaling_edm_cnoise
from gcd_jax.diffusion.discretization import edm_discretization, guidance_scales
from gcd_jax.diffusion.sigmas import harmonize_sigmas, sample_training_sigmas, training_sigmas


# --- §2.4 discretisation -------------------------------------------------------------------------

# The 26 values printed in docs/reference.md §2.4, as strings so the printed precision sets the tolerance.
SPEC_SIGMAS = ('700', '545.7', '421.6', '322.5', '244.0', '182.5', '134.9', '98.27', '70.54', '49.81',
               '34.54', '23.47', '15.59', '10.10', '6.354', '3.870', '2.269', '1.273', '0.678', '0.339',
               '0.157', '0.0664', '0.0248', '0.0079', '0.002', '0')


def test_default_schedule_matches_spec_values():
  got = edm_discretization(25, 0.002, 700.0, 7.0)
  assert got.shape == (26,) and got.dtype == np.float32
  for g, s in zip(got, SPEC_SIGMAS):
    decimals = len(s.split('.')[1]) if '.' in s else 0
    # Rounded to `decimals` places: |σ − printed| ≤ half a unit of the last printed digit.
    assert abs(float(g) - float(s)) <= 0.5 * 10 ** -decimals + 1e-6 * float(s), (g, s)
  # Independent hand formula in Python floats (float64) at full precision.
  hand = [(700 ** (1 / 7) + i / 24 * (0.002 ** (1 / 7) - 700 ** (1 / 7))) ** 7 for i in range(25)] + [0.0]
  np.testing.assert_allclose(got, hand, rtol=1e-6)
  assert got[0] == np.float32(700.0) and got[-1] == 0.0
  assert np.all(np.diff(got) < 0)


def test_initial_noise_scale():
  s0 = float(edm_discretization(25)[0])
  assert abs(math.sqrt(1 + s0 ** 2) - 700.0007142853) < 1e-6  # §2.4: ≈ 700.0007


def test_guidance_scales_appendix_b():
  want = [1.0000, 1.0385, 1.0769, 1.1154, 1.1538, 1.1923, 1.2308, 1.2692, 1.3077, 1.3462, 1.3846, 1.4231,
          1.4615, 1.5000]
  got = guidance_scales(14, 1.0, 1.5)
  np.testing.assert_allclose(got, want, atol=5e-5)  # Appendix B prints 4 decimals
  np.testing.assert_allclose(np.diff(guidance_scales(14, 1.0, 2.5)), 0.11538, atol=5e-6)  # preview step


# --- §2.1 preconditioning ------------------------------------------------------------------------

def test_vscaling_hand_values():
  sig = jnp.asarray([1.0, 0.5, math.e ** 4, 700.0])
  c_skip, c_out, c_in, c_noise = map(np.asarray, vscaling_edm_cnoise(sig))
  np.testing.assert_allclose(c_skip, [0.5, 0.8, 1 / (math.e ** 8 + 1), 1 / 490001], rtol=1e-6)
  np.testing.assert_allclose(c_out, [-1 / math.sqrt(2), -0.5 / math.sqrt(1.25),
                                     -math.e ** 4 / math.sqrt(math.e ** 8 + 1), -700 / math.sqrt(490001)],
                             rtol=1e-6)
  np.testing.assert_allclose(c_in, [1 / math.sqrt(2), 1 / math.sqrt(1.25), 1 / math.sqrt(math.e ** 8 + 1),
                                    1 / math.sqrt(490001)], rtol=1e-6)
  np.testing.assert_allclose(c_noise, [0.0, 0.25 * math.log(0.5), 1.0, 0.25 * math.log(700)], rtol=1e-6,
                             atol=1e-7)
  # v-parameterisation identity for σd = 1: c_skip + c_out² = 1.
  np.testing.assert_allclose(c_skip + c_out ** 2, 1.0, rtol=1e-6)


def test_denoise_plumbing():
  """Noisy latent first and scaled by c_in, concat second and unscaled; c_noise per row; D formula."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((6, 2, 3, 4)), jnp.float32)
  concat = jnp.asarray(rng.standard_normal((6, 2, 3, 4)), jnp.float32)
  sigma = jnp.asarray([0.1, 0.1, 0.1, 5.0, 5.0, 5.0], jnp.float32)
  cond = dict(concat=concat, crossattn=jnp.ones((6, 1, 5)), vector=jnp.full((6, 7), 2.0))
  seen = {}

  def network_fn(x_in, c_noise, context, y, num_frames):
    seen.update(x_in=x_in, c_noise=c_noise, context=context, y=y, num_frames=num_frames)
    return 3.0 * x_in[..., :4] - x_in[..., 4:]

  d = np.asarray(denoise(network_fn, x, sigma, cond, 3))
  s = np.asarray(sigma)[:, None, None, None]
  c_in = 1 / np.sqrt(s ** 2 + 1)
  np.testing.assert_allclose(seen['x_in'][..., :4], np.asarray(x) * c_in, rtol=1e-6)
  np.testing.assert_array_equal(seen['x_in'][..., 4:], concat)
  np.testing.assert_allclose(seen['c_noise'], 0.25 * np.log(np.asarray(sigma)), rtol=1e-6)
  assert seen['num_frames'] == 3 and seen['y'].shape == (6, 7) and seen['context'].shape == (6, 1, 5)
  f = 3.0 * np.asarray(x) * c_in - np.asarray(concat)
  want = np.asarray(x) / (s ** 2 + 1) - s / np.sqrt(s ** 2 + 1) * f
  np.testing.assert_allclose(d, want, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(network_input(x, sigma, concat)[..., 4:], concat)
  with pytest.raises(ValueError, match='one value per row'):
    denoise(network_fn, x, sigma[:3], cond, 3)


# --- §2.2 training sigmas ------------------------------------------------------------------------

def test_training_sigma_distribution():
  """ln σ ~ N(1.0, 1.6²): sample mean/std within 5 standard errors (n = 200 000: SE(mean) = 1.6/√n =
  0.0036, SE(std) ≈ 1.6/√(2n) = 0.0025)."""
  n = 200_000
  log_s = np.log(np.asarray(sample_training_sigmas(jax.random.key(0), n, 1.0, 1.6)), dtype=np.float64)
  assert abs(log_s.mean() - 1.0) < 5 * 1.6 / math.sqrt(n)
  assert abs(log_s.std() - 1.6) < 5 * 1.6 / math.sqrt(2 * n)


def test_harmonize_sigmas_one_per_video():
  b, t = 5, 14
  raw = sample_training_sigmas(jax.random.key(1), b * t)
  h = np.asarray(harmonize_sigmas(raw, t)).reshape(b, t)
  np.testing.assert_array_equal(h, np.repeat(np.asarray(raw).reshape(b, t)[:, :1], t, 1))  # frame 0's σ
  assert np.all(h == h[:, :1])  # all frames of a video equal
  assert len(np.unique(h[:, 0])) == b  # videos differ
  cfg = diffusion_config()
  h2 = np.asarray(training_sigmas(jax.random.key(1), b * t, t, cfg)).reshape(b, t)
  np.testing.assert_array_equal(h2, h)
  cfg.sigma_sampling.harmonize = False
  raw2 = np.asarray(training_sigmas(jax.random.key(1), b * t, t, cfg))
  np.testing.assert_array_equal(raw2, np.asarray(raw))
  assert len(np.unique(raw2)) == b * t
  with pytest.raises(ValueError, match='whole videos'):
    harmonize_sigmas(raw[:13], t)


# --- §2.3 loss -------------------------------------------------------------------------------------

def _numpy_reference_loss(pred, target, sigma, step, focus_top=0.1, focus_steps=5000, bias=None):
  """§2.3 in float64 numpy with Python int() truncation, written independently of loss.py."""
  loss_raw = (pred.astype(np.float64) - target) ** 2
  n = loss_raw.shape[0]
  loss_bias = np.zeros_like(loss_raw) if bias is None else loss_raw * bias
  loss_all = loss_raw + 0.5 * loss_bias
  flat = loss_all.reshape(n, -1)
  progress = min(max(step / focus_steps, 0.0), 1.0)
  cur_top = (1 - progress) + focus_top * progress
  if cur_top < 1:
    k = int(flat.shape[1] * cur_top)
    top = -np.sort(-flat, axis=1)[:, :k]
    focal = 0.9 * top.mean(1) + 0.1 * flat.mean(1)
  else:
    focal = flat.mean(1)
  final = focal + 0.5 * loss_bias.reshape(n, -1).mean(1)
  return final * (sigma.astype(np.float64) ** 2 + 1) / sigma.astype(np.float64) ** 2


@pytest.mark.parametrize('step,cur_top', [(0, 1.0), (2500, 0.55), (5000, 0.1), (10000, 0.1)])
def test_focal_loss_schedule(step, cur_top):
  rng = np.random.default_rng(step)
  pred = rng.standard_normal((6, 4, 6, 4)).astype(np.float32)  # C·H·W = 96 per row
  target = rng.standard_normal((6, 4, 6, 4)).astype(np.float32)
  sigma = np.exp(rng.standard_normal(6)).astype(np.float32)
  cfg = diffusion_config()
  got = np.asarray(dloss.gcd_loss_per_row(jnp.asarray(pred), jnp.asarray(target), jnp.asarray(sigma),
                                          jnp.int32(step), cfg))
  want = _numpy_reference_loss(pred, target, sigma, step)
  np.testing.assert_allclose(got, want, rtol=2e-6)
  np.testing.assert_allclose(float(dloss.focal_top_fraction(step, 0.1, 5000)), cur_top, rtol=1e-6)
  # k at 256×384 latents (C·H·W = 6144): 6144, int(3379.2) = 3379, int(614.4) = 614.
  flat = np.arange(6144, dtype=np.float32)[None]
  k_want = {0: 6144, 2500: 3379, 5000: 614, 10000: 614}[step]
  got_mean = float(dloss.focal_reduce(jnp.asarray(flat), dloss.focal_top_fraction(step, 0.1, 5000))[0])
  top = np.arange(6144 - k_want, 6144, dtype=np.float64).mean()
  want_mean = flat.mean() if step == 0 else 0.9 * top + 0.1 * flat.mean()
  assert abs(got_mean - want_mean) < 1e-3 * want_mean
  if step == 2500:
    print(f'focal loss at step 2500: per-row max rel diff vs numpy {np.max(np.abs(got / want - 1)):.2e}')


def test_focal_loss_under_jit_with_traced_step():
  rng = np.random.default_rng(3)
  pred, target = (rng.standard_normal((4, 4, 8, 8)).astype(np.float32) for _ in range(2))
  sigma = np.full(4, 2.0, np.float32)
  cfg = diffusion_config()
  fn = jax.jit(lambda st: dloss.gcd_loss_per_row(jnp.asarray(pred), jnp.asarray(target),
                                                  jnp.asarray(sigma), st, cfg))
  for step in (0, 1234, 2500, 4999, 5000, 7000):
    np.testing.assert_allclose(np.asarray(fn(jnp.int32(step))),
                               _numpy_reference_loss(pred, target, sigma, step), rtol=2e-6)


def test_edm_weighting():
  np.testing.assert_allclose(np.asarray(dloss.edm_weighting(jnp.asarray([1.0, 2.0, 0.5]))),
                             [2.0, 1.25, 5.0], rtol=1e-6)


def _color(rgb):
  return np.asarray(rgb, np.float32) / 127.5 - 1.0


def test_pd_class_reweighting_hand_example():
  """A 16×16 semantic frame → 2×2 latents (8×8 blocks): block (0,0) all Pedestrian (person, w 7), block
  (0,1) half Car (vehicle, w 3), block (1,0) a colour 0.03 away from Truck (not selected), block (1,1)
  a quarter Animal + a quarter Bus."""
  sem = np.full((1, 16, 16, 3), -1.0, np.float32)  # black background: no class
  sem[0, :8, :8] = _color((220, 20, 60))
  sem[0, :4, 8:] = _color((0, 0, 142))
  sem[0, 8:, :8] = _color((0, 0, 70)) + np.asarray([0.03, 0.03, 0.03], np.float32)
  sem[0, 8:12, 8:12] = _color((220, 20, 180))
  sem[0, 12:, 12:] = _color((0, 60, 100))
  cfg = diffusion_config('semantic')
  mask = np.asarray(dloss.pd_class_weight_mask(jnp.asarray(sem), (2, 2), cfg))[0, ..., 0]
  want = np.asarray([[6.0, 0.5 * 2.0], [0.0, 0.25 * 6.0 + 0.25 * 2.0]])
  np.testing.assert_allclose(mask, want, rtol=1e-6)

  # Full loss on this example: loss_raw = 1 everywhere (C = 1 channel), step 0 (no focal, cur_top = 1).
  pred = np.ones((1, 2, 2, 1), np.float32)
  target = np.zeros_like(pred)
  sigma = np.ones(1, np.float32)
  got = float(dloss.gcd_loss_per_row(jnp.asarray(pred), jnp.asarray(target), jnp.asarray(sigma), 0, cfg,
                                     jnp.asarray(sem))[0])
  bias_mean = want.mean()  # 2.0
  hand = (1.0 + 0.5 * bias_mean) + 0.5 * bias_mean  # mean(loss_all) + ½·mean(bias), then λ(1) = 2
  assert abs(got - 2.0 * hand) < 1e-5, (got, 2.0 * hand)
  # Same example, doubled error, against the numpy reference at step 2500 (focal on, k = int(4·0.55) = 2).
  got = np.asarray(dloss.gcd_loss_per_row(jnp.asarray(pred * 2), jnp.asarray(target), jnp.asarray(sigma),
                                          2500, cfg, jnp.asarray(sem)))
  want_ref = _numpy_reference_loss(pred * 2, target, sigma, 2500, bias=want[None, ..., None])
  np.testing.assert_allclose(got, want_ref, rtol=1e-6)
  # Without the semantic target the semantic config refuses to run.
  with pytest.raises(ValueError, match='semantic_target'):
    dloss.gcd_loss_per_row(jnp.asarray(pred), jnp.asarray(target), jnp.asarray(sigma), 0, cfg)
  # The RGB config ignores the semantic colours entirely.
  rgb = float(dloss.gcd_loss_per_row(jnp.asarray(pred), jnp.asarray(target), jnp.asarray(sigma), 0,
                                     diffusion_config(), jnp.asarray(sem))[0])
  assert abs(rgb - 2.0) < 1e-6


def test_diffusion_loss_composition():
  rng = np.random.default_rng(5)
  z = jnp.asarray(rng.standard_normal((4, 4, 4, 4)), jnp.float32)
  noise = jnp.asarray(rng.standard_normal((4, 4, 4, 4)), jnp.float32)
  sigma = jnp.asarray([0.5, 0.5, 3.0, 3.0], jnp.float32)
  cfg = diffusion_config()
  seen = {}

  def denoise_fn(x, s):
    seen['x'] = x
    return x * 0.5

  loss, aux = dloss.diffusion_loss(denoise_fn, z, sigma, noise, 0, cfg)
  x_noisy = np.asarray(z) + np.asarray(sigma)[:, None, None, None] * np.asarray(noise)
  np.testing.assert_allclose(seen['x'], x_noisy, rtol=1e-6)
  want = _numpy_reference_loss(x_noisy * 0.5, np.asarray(z), np.asarray(sigma), 0)
  np.testing.assert_allclose(np.asarray(aux['loss_per_row']), want, rtol=1e-5)
  assert abs(float(loss) - want.mean()) < 1e-5 * want.mean()
  perfect, _ = dloss.diffusion_loss(lambda x, s: z, z, sigma, noise, 100, cfg)
  assert float(perfect) == 0.0
