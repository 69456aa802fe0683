"""Image / video metrics of the GCD evaluation, in JAX (batched, jittable).

Everything is channels-last on `[0, 1]` floats: images `[..., H, W, C]`, masks `[..., H, W]` (bool),
any number of leading batch axes (samples, frames, ...). Per-image results have shape `[...]`.

What the reference computes (docs/reference.md §5.3, `gcd-model/scripts/test.py :: calculate_metrics`):
* PSNR   = `skimage.metrics.peak_signal_noise_ratio(pred, gt, data_range=1)` over all C·H·W values.
* SSIM   = `skimage.metrics.structural_similarity(pred, gt, data_range=1, channel_axis=0)`: per channel a
           7×7 uniform window (scipy `uniform_filter`), sample covariance (× N/(N−1), N = 49), K1 0.01,
           K2 0.03, the SSIM map cropped by pad = 3 on every side (so only windows fully inside the image
           count and the filter's boundary mode never matters), float64 mean, then the mean over channels.
           Our `ssim_map` is therefore the 'valid' box filter map `[..., H−6, W−6, C]`.
* Visible / occluded variants: occluded = pixels where the single-view reprojection of the source frame
  (§4.8 item 8, in [0, 1]) has `Σ_c |x| ≤ 1e-7` (the reference's test; "exactly black"); visible = the
  rest. Masked PSNR is skimage's PSNR over the masked values of all channels (`x[mask]`), NaN when the
  mask is empty. Masked SSIM is `eval_utils.masked_ssim(...)[1]`; our reading of it:
    1. the full (unmasked) per-channel SSIM map S, cropped by pad = 3 (same as plain SSIM);
    2. the mask eroded by `scipy.ndimage.binary_erosion(mask, iterations=3)` — default cross (4-connected)
       structuring element, pixels outside the image count as False, so after 3 iterations a pixel
       survives iff every pixel within L1 distance 3 is inside the image and in the mask;
    3. the eroded mask cropped by 3 px on each side; mean of S over it (NaN when empty), then the mean
       over channels.
  The windows of S near the mask edge still see pixels outside the mask (the reference does not
  re-normalise the window), which is what the erosion limits.
* Diversity: population std over samples (np.std, ddof 0), averaged over channels and pixels (masked:
  over the masked values), per frame; NaN for an empty mask.
* mIoU (semantic ParallelDomain models) is NOT in the reference (§5.3, §6 item 23). Our protocol:
  every pixel of prediction and ground truth is classified to the nearest palette colour (squared
  Euclidean RGB distance, ties → lowest palette index); GT pixels of the `ignore_index` class (PD
  "Void", id 255) are excluded from both sides; per class, intersection = |P∩G|, union = |P∪G| summed
  over the pixels of all frames of one video (one sample), and the video's mIoU is the mean IoU over
  the classes with union > 0 (= present in the GT or the prediction of that video). Per-frame mIoU
  (same rule inside one frame) is also returned for the curves. The evaluation table reports the mean ±
  std of the per-video mIoU over scenes × samples, and a dataset-level mIoU from the summed counts.
"""

from __future__ import annotations

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np

# skimage's defaults (structural_similarity with gaussian_weights=False).
SSIM_WIN_SIZE = 7
SSIM_K1 = 0.01
SSIM_K2 = 0.03
# test.py: occluded_mask = (np.sum(np.abs(reproject_rgb), axis=1) <= 1e-7)
OCCLUSION_EPS = 1e-7


def _flatten_images(x: jax.Array) -> tuple[jax.Array, tuple[int, ...]]:
  """[..., H, W, C] → ([N, H, W, C], leading shape)."""
  lead = x.shape[:-3]
  return x.reshape((-1,) + x.shape[-3:]), lead


def _check_pair(pred, target):
  """Both [..., H, W, C] with equal image shapes; leading axes broadcast. Returns the broadcast pair."""
  if pred.ndim < 3 or target.ndim < 3:
    raise ValueError(f'metric inputs must be images [..., H, W, C]; got shapes {pred.shape}, {target.shape}')
  if pred.shape[-3:] != target.shape[-3:]:
    raise ValueError(f'metric inputs differ in image shape: prediction {pred.shape} vs target {target.shape}')
  shape = jnp.broadcast_shapes(pred.shape, target.shape)
  return jnp.broadcast_to(pred, shape), jnp.broadcast_to(target, shape)


def psnr(pred: jax.Array, target: jax.Array, data_range: float = 1.0) -> jax.Array:
  """PSNR in dB over all H·W·C values. pred/target: [..., H, W, C] → [...]. +inf if identical."""
  pred, target = _check_pair(pred, target)
  d = pred.astype(jnp.float32) - target.astype(jnp.float32)
  mse = jnp.mean(jnp.square(d), axis=(-3, -2, -1))
  return 10.0 * jnp.log10(data_range ** 2 / mse)


def masked_psnr(pred: jax.Array, target: jax.Array, mask: jax.Array,
                data_range: float = 1.0) -> jax.Array:
  """PSNR over the masked pixels (all channels). mask: [..., H, W] bool → [...]; NaN if mask empty."""
  pred, target = _check_pair(pred, target)
  m = mask.astype(jnp.float32)[..., None]
  d = pred.astype(jnp.float32) - target.astype(jnp.float32)
  count = jnp.sum(m, axis=(-3, -2, -1)) * pred.shape[-1]
  sse = jnp.sum(jnp.square(d) * m, axis=(-3, -2, -1))
  mse = sse / jnp.maximum(count, 1.0)
  out = 10.0 * jnp.log10(data_range ** 2 / mse)
  return jnp.where(count > 0, out, jnp.nan)


def _box_mean_valid(x: jax.Array, win: int) -> jax.Array:
  """Mean over each win×win window fully inside the image. x: [N, H, W, C] → [N, H−win+1, W−win+1, C].

  Separable sums (rows then columns), like scipy's uniform_filter, in float32.
  """
  x = jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, win, 1, 1), (1, 1, 1, 1), 'VALID')
  x = jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, 1, win, 1), (1, 1, 1, 1), 'VALID')
  return x / float(win * win)


def ssim_map(pred: jax.Array, target: jax.Array, data_range: float = 1.0, *,
             win_size: int = SSIM_WIN_SIZE, k1: float = SSIM_K1, k2: float = SSIM_K2,
             use_sample_covariance: bool = True) -> jax.Array:
  """Per-channel SSIM map, already cropped by (win_size−1)//2: [..., H, W, C] → [..., H−6, W−6, C]."""
  pred, target = _check_pair(pred, target)
  if win_size % 2 != 1:
    raise ValueError(f'SSIM window size must be odd, got {win_size}')
  if pred.shape[-3] < win_size or pred.shape[-2] < win_size:
    raise ValueError(f'SSIM needs images of at least {win_size}×{win_size} pixels, got '
                     f'{pred.shape[-3]}×{pred.shape[-2]}')
  x, lead = _flatten_images(pred.astype(jnp.float32))
  y, _ = _flatten_images(target.astype(jnp.float32))
  n = win_size * win_size  # skimage: NP = win_size ** ndim with ndim = 2 (one channel at a time)
  cov_norm = n / (n - 1) if use_sample_covariance else 1.0
  # One reduce_window over the five stacked statistics.
  stats = _box_mean_valid(jnp.concatenate([x, y, x * x, y * y, x * y], axis=-1), win_size)
  ux, uy, uxx, uyy, uxy = jnp.split(stats, 5, axis=-1)
  vx = cov_norm * (uxx - ux * ux)
  vy = cov_norm * (uyy - uy * uy)
  vxy = cov_norm * (uxy - ux * uy)
  c1 = (k1 * data_range) ** 2
  c2 = (k2 * data_range) ** 2
  a1, a2 = 2 * ux * uy + c1, 2 * vxy + c2
  b1, b2 = ux ** 2 + uy ** 2 + c1, vx + vy + c2
  s = (a1 * a2) / (b1 * b2)
  return s.reshape(lead + s.shape[1:])


def ssim(pred: jax.Array, target: jax.Array, data_range: float = 1.0, **kwargs) -> jax.Array:
  """Mean SSIM (skimage, channel_axis given): [..., H, W, C] → [...]."""
  return jnp.mean(ssim_map(pred, target, data_range, **kwargs), axis=(-3, -2, -1))


def erode_mask(mask: jax.Array, iterations: int) -> jax.Array:
  """`scipy.ndimage.binary_erosion(mask, iterations=k)` with its default cross structure and
  border_value 0, for each [H, W] mask of a batch [..., H, W]."""
  m = mask.astype(bool)
  for _ in range(iterations):
    p = jnp.pad(m, [(0, 0)] * (m.ndim - 2) + [(1, 1), (1, 1)], constant_values=False)
    m = (p[..., 1:-1, 1:-1] & p[..., :-2, 1:-1] & p[..., 2:, 1:-1]
         & p[..., 1:-1, :-2] & p[..., 1:-1, 2:])
  return m


def masked_ssim(pred: jax.Array, target: jax.Array, mask: jax.Array, data_range: float = 1.0, *,
                win_size: int = SSIM_WIN_SIZE) -> jax.Array:
  """SSIM averaged over the eroded, border-cropped mask (`eval_utils.masked_ssim(...)[1]`).

  pred/target [..., H, W, C], mask [..., H, W] → [...]; NaN where the eroded mask is empty.
  """
  pad = (win_size - 1) // 2
  s = ssim_map(pred, target, data_range, win_size=win_size)
  m = erode_mask(mask, pad)[..., pad:mask.shape[-2] - pad, pad:mask.shape[-1] - pad]
  m = m.astype(jnp.float32)
  count = jnp.sum(m, axis=(-2, -1))
  # Mean over the mask per channel, then over channels (equal counts → one weighted mean).
  total = jnp.sum(s * m[..., None], axis=(-3, -2, -1)) / s.shape[-1]
  return jnp.where(count > 0, total / jnp.maximum(count, 1.0), jnp.nan)


def occlusion_mask(reproject: jax.Array) -> jax.Array:
  """Occluded pixels of a reprojected source view in [0, 1]: [..., H, W, 3] → bool [..., H, W]."""
  return jnp.sum(jnp.abs(reproject.astype(jnp.float32)), axis=-1) <= OCCLUSION_EPS


def diversity(samples: jax.Array, mask: jax.Array | None = None) -> jax.Array:
  """Mean over pixels (and channels) of the std over samples.

  samples [S, ..., H, W, C]; mask [..., H, W] or None → [...]; NaN where the mask is empty.
  """
  std = jnp.std(samples.astype(jnp.float32), axis=0)  # ddof 0, as np.std in the reference
  if mask is None:
    return jnp.mean(std, axis=(-3, -2, -1))
  m = mask.astype(jnp.float32)[..., None]
  count = jnp.sum(m, axis=(-3, -2, -1))
  return jnp.where(count > 0, jnp.sum(std * m, axis=(-3, -2, -1)) / jnp.maximum(count, 1.0) / std.shape[-1],
                   jnp.nan)


# ----------------------------------------------------------------------------------------------- mIoU


def classify_palette(rgb: jax.Array, palette: jax.Array) -> jax.Array:
  """Nearest palette colour per pixel: rgb [..., H, W, 3] in [0, 1], palette [K, 3] → int32 [..., H, W]."""
  d = jnp.sum(jnp.square(rgb[..., None, :].astype(jnp.float32) - palette.astype(jnp.float32)), axis=-1)
  return jnp.argmin(d, axis=-1).astype(jnp.int32)


def semantic_iou_counts(pred_rgb: jax.Array, target_rgb: jax.Array, palette: jax.Array,
                        ignore_index: int | None = None) -> tuple[jax.Array, jax.Array]:
  """Per-class intersection and union pixel counts of one image each.

  pred_rgb / target_rgb [..., H, W, 3] in [0, 1]; palette [K, 3] → (intersection, union) int32 [..., K].
  Pixels whose GT class is `ignore_index` are left out on both sides.
  """
  k = palette.shape[0]
  p = classify_palette(pred_rgb, palette)
  g = classify_palette(target_rgb, palette)
  valid = jnp.ones(g.shape, bool) if ignore_index is None else g != ignore_index
  p1 = jax.nn.one_hot(p, k, dtype=jnp.int32) * valid[..., None]
  g1 = jax.nn.one_hot(g, k, dtype=jnp.int32) * valid[..., None]
  inter = jnp.sum(p1 * g1, axis=(-3, -2))
  union = jnp.sum(jnp.maximum(p1, g1), axis=(-3, -2))
  return inter, union


def miou_from_counts(intersection: jax.Array, union: jax.Array) -> jax.Array:
  """Mean IoU over classes with union > 0: [..., K] → [...] (NaN if no class at all)."""
  intersection = intersection.astype(jnp.float32)
  union = union.astype(jnp.float32)
  present = union > 0
  iou = jnp.where(present, intersection / jnp.maximum(union, 1.0), 0.0)
  n = jnp.sum(present, axis=-1)
  return jnp.where(n > 0, jnp.sum(iou, axis=-1) / jnp.maximum(n, 1), jnp.nan)


def load_semantic_palette(ontology_json: str, void_id: int = 255) -> tuple[np.ndarray, np.ndarray, int | None]:
  """ParallelDomain ontology JSON → (palette [K, 3] float32 in [0, 1], class ids [K], ignore index).

  Classes sharing one colour cannot be told apart from an RGB output; they are merged (the first id
  keeps the colour). The ignore index is the palette row of `void_id` (PD 'Void' = 255) if listed.
  """
  with open(ontology_json) as f:
    onto = json.load(f)
  colours, ids, seen = [], [], {}
  for item in sorted(onto['items'], key=lambda it: int(it['id'])):
    c = item['color']
    key = (int(c['r']), int(c['g']), int(c['b']))
    if key in seen:
      continue
    seen[key] = len(colours)
    colours.append(key)
    ids.append(int(item['id']))
  if not colours:
    raise ValueError(f'ontology {ontology_json} lists no classes (expected items[] with id and color)')
  ignore = ids.index(void_id) if void_id in ids else None
  return np.asarray(colours, np.float32) / 255.0, np.asarray(ids, np.int32), ignore


# ------------------------------------------------------------------------------------ video bundle


@functools.partial(jax.jit, static_argnames=('with_masks',))
def _video_metrics(samples, target, reproject, with_masks: bool):
  out = {
      'psnr': psnr(samples, target[None]),
      'ssim': ssim(samples, target[None]),
      'diversity': diversity(samples),
  }
  if with_masks:
    occ = occlusion_mask(reproject)
    vis = ~occ
    out.update({
        'psnr_vis': masked_psnr(samples, target[None], vis[None]),
        'psnr_occ': masked_psnr(samples, target[None], occ[None]),
        'ssim_vis': masked_ssim(samples, target[None], vis[None]),
        'ssim_occ': masked_ssim(samples, target[None], occ[None]),
        'diversity_vis': diversity(samples, vis),
        'diversity_occ': diversity(samples, occ),
        'occluded_fraction': jnp.mean(occ.astype(jnp.float32), axis=(-2, -1)),
    })
  return out


def video_metrics(samples: jax.Array, target: jax.Array, reproject: jax.Array | None = None) -> dict:
  """All per-frame metrics of one video, as `test.py :: calculate_metrics`.

  samples [S, T, H, W, 3], target [T, H, W, 3], reproject [T, H, W, 3] or None, all in [0, 1].
  Returns numpy arrays: psnr/ssim(_vis/_occ) [S, T]; diversity(_vis/_occ), occluded_fraction [T].
  """
  if samples.ndim != 5 or samples.shape[1:] != target.shape:
    raise ValueError(f'video_metrics: samples must be [S, T, H, W, 3] matching target [T, H, W, 3]; got '
                     f'{samples.shape} and {target.shape}')
  with_masks = reproject is not None
  out = _video_metrics(samples, target, reproject if with_masks else target, with_masks)
  return {k: np.asarray(v, np.float64) for k, v in out.items()}
