"""Metrics vs scikit-image / scipy (what the reference calls) and hand-computed values."""

import functools

import jax
import numpy as np
import pytest
import skimage.metrics
from scipy.ndimage import binary_erosion

from gcd_jax.evaluate import metrics


def _pair(seed, shape=(3, 20, 27, 3), noise=0.2):
  rng = np.random.default_rng(seed)
  a = rng.random(shape, dtype=np.float32)
  b = np.clip(a + noise * rng.standard_normal(shape).astype(np.float32), 0, 1)
  return a, b


def _chw(x):  # the reference evaluates (3, H, W) frames with channel_axis=0
  return np.ascontiguousarray(np.moveaxis(x, -1, 0))


@pytest.mark.parametrize('seed,noise', [(0, 0.2), (1, 0.02), (2, 0.6)])
def test_psnr_ssim_equal_skimage(seed, noise):
  a, b = _pair(seed, noise=noise)
  got_p = np.asarray(jax.jit(metrics.psnr)(a, b))
  got_s = np.asarray(jax.jit(metrics.ssim)(a, b))
  for i in range(a.shape[0]):
    ref_p = skimage.metrics.peak_signal_noise_ratio(_chw(a[i]), _chw(b[i]), data_range=1.0)
    ref_s = skimage.metrics.structural_similarity(_chw(a[i]), _chw(b[i]), data_range=1.0, channel_axis=0)
    assert abs(got_p[i] - ref_p) < 1e-5, (got_p[i], ref_p)
    assert abs(got_s[i] - ref_s) < 1e-5, (got_s[i], ref_s)


def test_ssim_map_equals_skimage_full_map_cropped():
  a, b = _pair(3, shape=(16, 23, 3))
  got = np.asarray(metrics.ssim_map(a, b))
  for c in range(3):
    _, full = skimage.metrics.structural_similarity(a[..., c], b[..., c], data_range=1.0, full=True)
    np.testing.assert_allclose(got[..., c], full[3:-3, 3:-3], atol=2e-6)


def _masked_ssim_reference(a, b, mask):
  """eval_utils.masked_ssim(...)[1] transcribed with scipy/skimage (channel_axis = last here)."""
  vals = []
  for c in range(a.shape[-1]):
    _, s = skimage.metrics.structural_similarity(a[..., c], b[..., c], data_range=1.0, full=True)
    s_crop = s[3:-3, 3:-3]
    m = binary_erosion(mask, iterations=3)[3:-3, 3:-3]
    vals.append(np.mean(s_crop[m], dtype=np.float64) if m.any() else np.nan)
  return np.mean(vals)


def test_masked_variants_vs_numpy_reference():
  a, b = _pair(4, shape=(2, 24, 30, 3))
  reproject = np.random.default_rng(5).random((2, 24, 30, 3)).astype(np.float32)
  reproject[:, 4:15, 6:22] = 0.0  # occluded block
  reproject[1, 20:, :] = 0.0
  occ = np.asarray(metrics.occlusion_mask(reproject))
  np.testing.assert_array_equal(occ, np.sum(np.abs(reproject), -1) <= 1e-7)
  vis = ~occ
  p_vis = np.asarray(metrics.masked_psnr(a, b, vis))
  p_occ = np.asarray(metrics.masked_psnr(a, b, occ))
  s_vis = np.asarray(metrics.masked_ssim(a, b, vis))
  s_occ = np.asarray(metrics.masked_ssim(a, b, occ))
  for i in range(2):
    for got_p, got_s, m in ((p_vis, s_vis, vis[i]), (p_occ, s_occ, occ[i])):
      mm = np.broadcast_to(m[..., None], a[i].shape)
      ref_p = skimage.metrics.peak_signal_noise_ratio(a[i][mm], b[i][mm], data_range=1.0)
      assert abs(got_p[i] - ref_p) < 1e-5
      assert abs(got_s[i] - _masked_ssim_reference(a[i], b[i], m)) < 1e-5
  # mask erosion = scipy binary_erosion(iterations=3), border pixels count as outside
  rng = np.random.default_rng(6)
  m = rng.random((3, 17, 19)) > 0.2
  np.testing.assert_array_equal(np.asarray(metrics.erode_mask(m, 3)),
                                np.stack([binary_erosion(x, iterations=3) for x in m]))


def test_masked_ssim_by_hand_single_window():
  """7×7 image, mask = the whole image: after erosion + crop exactly one pixel (3, 3) is left, whose
  SSIM is the textbook formula on the whole 7×7 window with sample (co)variances."""
  rng = np.random.default_rng(7)
  a = rng.random((7, 7, 1)).astype(np.float32)
  b = rng.random((7, 7, 1)).astype(np.float32)
  mask = np.ones((7, 7), bool)
  # After 3 cross-erosions with an outside border of False, only pixels ≥ 4 rows and columns away
  # from the outside survive: (3, 3) alone in a 7×7 image.
  er = np.asarray(metrics.erode_mask(mask, 3))
  assert er.sum() == 1 and er[3, 3]
  x = a[:, :, 0].astype(np.float64).ravel()
  y = b[:, :, 0].astype(np.float64).ravel()
  mx, my = x.mean(), y.mean()
  vx, vy = x.var(ddof=1), y.var(ddof=1)
  cxy = np.sum((x - mx) * (y - my)) / (x.size - 1)
  c1, c2 = 0.01 ** 2, 0.03 ** 2
  hand = (2 * mx * my + c1) * (2 * cxy + c2) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
  got = float(metrics.masked_ssim(a, b, mask))
  assert abs(got - hand) < 1e-5
  # With the mask shrunk by one pixel nothing survives: NaN, as np.mean of an empty selection.
  mask2 = mask.copy()
  mask2[0] = False
  assert np.isnan(float(metrics.masked_ssim(a, b, mask2)))
  assert np.isnan(float(metrics.masked_psnr(a, b, np.zeros((7, 7), bool))))


def test_masked_psnr_by_hand():
  a = np.zeros((2, 2, 3), np.float32)
  b = np.zeros((2, 2, 3), np.float32)
  b[0, 0] = 0.1  # error only at pixel (0, 0)
  mask = np.array([[True, True], [False, False]])
  # mse over the 2 masked pixels × 3 channels = 3·0.01 / 6 = 0.005 → 10·log10(1/0.005)
  assert abs(float(metrics.masked_psnr(a, b, mask)) - 10 * np.log10(200.0)) < 1e-4


def test_diversity_matches_reference_formula():
  rng = np.random.default_rng(8)
  s = rng.random((3, 4, 10, 12, 3)).astype(np.float32)  # [S, T, H, W, C]
  occ = rng.random((4, 10, 12)) > 0.7
  got = np.asarray(metrics.diversity(s))
  ref = np.nanmean(np.nanmean(np.std(s, axis=0), axis=-1), axis=(1, 2))
  np.testing.assert_allclose(got, ref, atol=1e-6)
  got_occ = np.asarray(metrics.diversity(s, occ))
  ref_occ = [np.nanmean(np.std(np.stack([x[t][np.broadcast_to(occ[t][..., None], x[t].shape)]
                                         for x in s]), axis=0)) for t in range(4)]
  np.testing.assert_allclose(got_occ, ref_occ, atol=1e-6)


def test_video_metrics_bundle_shapes_and_values():
  rng = np.random.default_rng(9)
  samples = rng.random((2, 3, 16, 16, 3)).astype(np.float32)
  gt = rng.random((3, 16, 16, 3)).astype(np.float32)
  rep = gt.copy()
  rep[:, :8] = 0.0
  out = metrics.video_metrics(samples, gt, rep)
  assert out['psnr'].shape == (2, 3) and out['ssim_occ'].shape == (2, 3) and out['diversity'].shape == (3,)
  ref = skimage.metrics.peak_signal_noise_ratio(_chw(samples[1, 2]), _chw(gt[2]), data_range=1.0)
  assert abs(out['psnr'][1, 2] - ref) < 1e-5
  np.testing.assert_allclose(out['occluded_fraction'], 0.5)


def test_miou_hand_example():
  palette = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], np.float32)  # class 0 = void
  g = np.array([[1, 1, 2, 2],  # GT classes
                [1, 1, 2, 2],
                [0, 0, 3, 3],
                [0, 0, 3, 3]])
  p = np.array([[1, 1, 2, 1],  # predicted classes
                [1, 2, 2, 2],
                [3, 3, 3, 3],
                [0, 1, 3, 3]])
  # Slightly perturbed colours: classification is by the nearest palette entry.
  gt_rgb = palette[g] * 0.9 + 0.05
  pred_rgb = palette[p] * 0.8 + 0.1
  inter, union = metrics.semantic_iou_counts(pred_rgb, gt_rgb, palette, ignore_index=0)
  # Void GT pixels (rows 2-3, cols 0-1) are ignored on both sides.
  # class 1: GT {(0,0),(0,1),(1,0),(1,1)}, P {(0,0),(0,1),(0,3),(1,0)} → I 3, U 5
  # class 2: GT {(0,2),(0,3),(1,2),(1,3)}, P {(0,2),(1,1),(1,2),(1,3)} → I 3, U 5
  # class 3: GT {(2,2),(2,3),(3,2),(3,3)}, P same (void-GT pixels dropped) → I 4, U 4
  np.testing.assert_array_equal(np.asarray(inter), [0, 3, 3, 4])
  np.testing.assert_array_equal(np.asarray(union), [0, 5, 5, 4])
  miou = float(metrics.miou_from_counts(inter, union))
  assert abs(miou - (0.6 + 0.6 + 1.0) / 3) < 1e-6
  # Without an ignore class, void counts as a class: GT void {(2,0),(2,1),(3,0),(3,1)}, P void {(3,0)}
  inter2, union2 = metrics.semantic_iou_counts(pred_rgb, gt_rgb, palette)
  np.testing.assert_array_equal(np.asarray(inter2), [1, 3, 3, 4])
  np.testing.assert_array_equal(np.asarray(union2), [4, 6, 5, 6])


def test_jit_batched_shapes():
  a, b = _pair(10, shape=(2, 3, 12, 12, 3))
  f = jax.jit(functools.partial(metrics.ssim, data_range=1.0))
  assert f(a, b).shape == (2, 3)
  with pytest.raises(ValueError, match='at least 7'):
    metrics.ssim(a[..., :5, :5, :], b[..., :5, :5, :])
