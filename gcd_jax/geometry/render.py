"""The point-cloud renderer of GCD (docs/reference.md §4.8; reference `geometry.py :: project_points_to_pixels,
spreaded_index_add, blur_into_black`, `kubric_arbit.py :: synth_src_dst_rgb`), in JAX: jittable, float32,
no x64.

Pipeline of one view (`render_view`):
  1. project_points: x_c = (x_w − t)·R, uv = K·x_c / z, uv_int = int(uv + 0.5) (C-style truncation toward
     zero, as torch's `.type(torch.int32)`; so uv ∈ (−1.5, −0.5] still lands on pixel 0), keep
     0 ≤ u < W, 0 ≤ v < H, z > 0.1.
  2. soft z-buffer: if max z ≥ 64 (ParallelDomain): z' = clamp(√z, 0, 32), strength 256; else z' = z,
     strength 512. zn = z'/max z' · 2 − 1, w = exp(−zn·strength) (max over the *kept* points).
  3. splat (spread radius 1): w, w·c to the own pixel; 0.02·w, 0.02·w·c to (u+1, v), (u, v+1), (u+1, v+1)
     when inside the image.
  4. pixel = Σ w·c / Σ w, black where nothing landed, clamp to [0, 1].
  5. blur_into_black (kernel 21, σ 21/4; reproject baseline: kernel 3, σ 0.75), then a 3×3 σ 0.6 blur.
  6. bilinear resize (align_corners=False, no antialias) to the model size, map to [−1, 1].

Numerical stability (§6 item 9): the reference needs float64 (`exp(±512)`). We compute log-weights
s = −zn·strength, take the per-pixel maximum m_p over *every* contribution landing on pixel p (own
splats with s, neighbour splats with s + log 0.02; a segment-max over the points, then image shifts),
and accumulate exp(s − m_p) (times 0.02 for neighbour splats). Σw·c/Σw is invariant to the common
factor exp(m_p), so the result equals the reference formula, while every term is ≤ 1 and the largest
is exactly 1 (no overflow, no 0/0 from underflow). The points are visited once: the neighbour splats
of all points of a pixel q add up to 0.02 × q's own aggregate, so they are shifted pixel aggregates.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

NEIGHBOR_WEIGHT = 0.02
# Neighbour offsets (dx, dy) of `spreaded_index_add` with radius 1, in the reference's loop order.
NEIGHBOR_OFFSETS_RADIUS1 = ((0, 1), (1, 0), (1, 1))
PD_DEPTH_THRESHOLD = 64.0   # max z ≥ 64 m → "ParallelDomain" branch
KUBRIC_STRENGTH = 512.0
PD_STRENGTH = 256.0
PD_SQRT_DEPTH_CLAMP = 32.0
MIN_DEPTH = 0.1


def _neighbor_offsets(radius: int) -> tuple[tuple[int, int], ...]:
  """Offsets of `spreaded_index_add` for any radius (dx outer loop, dy inner; (0, 0) skipped)."""
  left, right = radius // 2, (radius + 1) // 2
  return tuple((dx, dy) for dx in range(-left, right + 1) for dy in range(-left, right + 1)
               if (dx, dy) != (0, 0))


def project_points(points, k_pixels, c2w, height: int, width: int):
  """Project world points into a camera (§4.8 step 2).

  points [N, 3], k_pixels [3, 3], c2w [4, 4] → (uv_int [N, 2] int32 (u = column, v = row; 0 where not
  kept), z [N] float32 (camera depth), kept [N] bool (inside the image and z > 0.1)).
  """
  points = jnp.asarray(points, jnp.float32)
  k = jnp.asarray(k_pixels, jnp.float32)
  c2w = jnp.asarray(c2w, jnp.float32)
  # Written as broadcast multiply-adds rather than [N,3]×[3,3] matmuls: XLA fuses them into one loop
  # (the skinny dots were ~25× slower on CPU) and every product stays exact float32.
  d = points - c2w[:3, 3]
  xc = d[:, 0:1] * c2w[0, :3] + d[:, 1:2] * c2w[1, :3] + d[:, 2:3] * c2w[2, :3]   # (x − t)·R
  uvw = xc[:, 0:1] * k[:, 0] + xc[:, 1:2] * k[:, 1] + xc[:, 2:3] * k[:, 2]        # K·x_c
  z = xc[:, 2]
  uv = uvw[:, :2] / uvw[:, 2:3]
  shifted = uv + 0.5
  # trunc(uv + 0.5) ∈ [0, size) ⟺ −1 < uv + 0.5 < size (truncation toward zero); test in float so that
  # huge/NaN coordinates of points behind the camera never reach the int cast.
  size = jnp.array([width, height], jnp.float32)
  inside = jnp.all((shifted > -1.0) & (shifted < size), axis=-1)
  kept = inside & (z > MIN_DEPTH)
  uv_int = jnp.where(kept[:, None], jnp.trunc(jnp.where(kept[:, None], shifted, 0.0)), 0.0).astype(jnp.int32)
  return uv_int, z, kept


def soft_zbuffer_log_weights(z, kept, strength=None):
  """log w = −zn·strength of §4.8 step 3, over the kept points. z, kept [N] → (log_w [N] f32 (0 where not
  kept), strength used (scalar)). `strength` overrides the automatic 512 / 256 (the depth transform
  still follows the max-depth rule)."""
  z = jnp.asarray(z, jnp.float32)
  zmax = jnp.max(jnp.where(kept, z, -jnp.inf))
  is_pd = zmax >= PD_DEPTH_THRESHOLD
  zt = jnp.where(is_pd, jnp.clip(jnp.sqrt(jnp.maximum(z, 0.0)), 0.0, PD_SQRT_DEPTH_CLAMP), z)
  ztmax = jnp.max(jnp.where(kept, zt, -jnp.inf))
  auto = jnp.where(is_pd, PD_STRENGTH, KUBRIC_STRENGTH)
  strength = auto if strength is None else jnp.asarray(strength, jnp.float32)
  zn = zt / jnp.where(kept.any(), ztmax, 1.0) * 2.0 - 1.0
  return jnp.where(kept, -zn * strength, 0.0), strength


@functools.partial(jax.jit, static_argnames=('height', 'width', 'spread_radius', 'neighbor_weight', 'clamp'))
def render_point_cloud(points, colors, k_pixels, c2w, height: int, width: int, *, strength=None,
                       valid=None, spread_radius: int = 1, neighbor_weight: float = NEIGHBOR_WEIGHT,
                       clamp: bool = True):
  """Soft z-buffered splatting of a coloured point cloud (§4.8 steps 2–5), float32-stable.

  points [N, 3], colors [N, C] (floats, [0, 1] for RGB), k_pixels [3, 3] (pixels of the render size),
  c2w [4, 4]; valid [N] bool (optional; False = padding point, ignored). height/width are static.
  → (image [H, W, C] float32 = Σ w·c / Σ w (0 where empty, clamped to [0, 1] when `clamp`),
     mask_nonempty [H, W] bool (some point or neighbour splat landed)).
  """
  colors = jnp.asarray(colors, jnp.float32)
  c = colors.shape[-1]
  uv, z, kept = project_points(points, k_pixels, c2w, height, width)
  if valid is not None:
    kept = kept & jnp.asarray(valid, bool)
  log_w, _ = soft_zbuffer_log_weights(z, kept, strength)

  num_pix = height * width
  dump = num_pix  # points that are not kept go to an extra segment that is dropped at the end
  ids = jnp.where(kept, uv[:, 1] * width + uv[:, 0], dump)

  # One pass over the points: per pixel q, the max own log weight M_q, a reference colour (that of a
  # max-weight point), D_q = Σ exp(s − M_q) and N_q = Σ exp(s − M_q)·(c − c_ref_q).
  big_m = jax.ops.segment_max(log_w, ids, num_segments=num_pix + 1)
  c_ref = jnp.zeros((num_pix + 1, c), jnp.float32).at[jnp.where(log_w >= big_m[ids], ids, dump)].set(colors)
  e = jnp.exp(log_w - big_m[ids])
  d_own = jnp.zeros((num_pix + 1,), jnp.float32).at[ids].add(e)
  n_own = jnp.zeros((num_pix + 1, c), jnp.float32).at[ids].add(e[:, None] * (colors - c_ref[ids]))
  big_m = big_m[:num_pix].reshape(height, width)
  d_own = d_own[:num_pix].reshape(height, width)
  # Σ exp(s − M)·c; the product D·c_ref carries one rounding, the spread term N only the colour spread,
  # so a pixel fed by many same-coloured points stays exact (no n·ε accumulation).
  a_own = (n_own[:num_pix] + d_own.reshape(-1, 1) * c_ref[:num_pix]).reshape(height, width, c)
  has_pts = jnp.isfinite(big_m) & (d_own > 0)
  big_m = jnp.where(has_pts, big_m, -jnp.inf)

  # The splat of every point of pixel q onto q + (dx, dy) with factor 0.02 is, summed, the pixel-level
  # aggregate of q times 0.02 — so the neighbour splats are image shifts of (M, D, A). The max over all
  # contributions landing on p (own: M_p; neighbour: M_q + log 0.02) stabilises the exponentials.
  def shift(x, dx, dy, fill):
    pad = [(max(dy, 0), max(-dy, 0)), (max(dx, 0), max(-dx, 0))] + [(0, 0)] * (x.ndim - 2)
    x = jnp.pad(x, pad, constant_values=fill)
    return x[max(-dy, 0):max(-dy, 0) + height, max(-dx, 0):max(-dx, 0) + width]

  sources = [(big_m, d_own, a_own)]
  log_nw = math.log(neighbor_weight)
  for dx, dy in _neighbor_offsets(spread_radius):
    sources.append((shift(big_m, dx, dy, -jnp.inf) + log_nw, shift(d_own, dx, dy, 0.0), shift(a_own, dx, dy, 0.0)))
  m = functools.reduce(jnp.maximum, [lm for lm, _, _ in sources])
  nonempty = jnp.isfinite(m)
  m_safe = jnp.where(nonempty, m, 0.0)
  den = jnp.zeros((height, width), jnp.float32)
  num = jnp.zeros((height, width, c), jnp.float32)
  for lm, d, a in sources:
    f = jnp.exp(lm - m_safe)  # ≤ 1; 0 for sources without points (lm = −inf)
    den = den + f * d
    num = num + f[..., None] * a
  img = jnp.where(nonempty[..., None], num / jnp.where(nonempty, den, 1.0)[..., None], 0.0)
  if clamp:
    img = jnp.clip(img, 0.0, 1.0)
  return img, nonempty


# ---------------------------------------------------------------------------------------- blur & resize

def gaussian_kernel1d(kernel_size: int, sigma: float) -> np.ndarray:
  """torchvision `_get_gaussian_kernel1d`: exp(−x²/2σ²) on linspace(−(k−1)/2, (k−1)/2, k), normalised."""
  half = (kernel_size - 1) * 0.5
  x = np.linspace(-half, half, kernel_size)
  pdf = np.exp(-0.5 * (x / sigma) ** 2)
  return pdf / pdf.sum()


def _reflect_index(i: np.ndarray, n: int) -> np.ndarray:
  """torch/NumPy 'reflect' padding index (edge not repeated), periodic for any overshoot."""
  if n == 1:
    return np.zeros_like(i)
  period = 2 * (n - 1)
  i = np.mod(i, period)
  return np.where(i < n, i, period - i)


@functools.lru_cache(maxsize=64)
def _blur_matrix(n: int, kernel_size: int, sigma: float) -> np.ndarray:
  """[n, n] matrix of a 1-D Gaussian blur with reflect padding (kernel k//2 each side), float32."""
  k = gaussian_kernel1d(kernel_size, sigma)
  half = kernel_size // 2
  mat = np.zeros((n, n))
  rows = np.arange(n)
  for t in range(kernel_size):
    np.add.at(mat, (rows, _reflect_index(rows + t - half, n)), k[t])
  return mat.astype(np.float32)


@functools.partial(jax.jit, static_argnames=('kernel_size', 'sigma'))
def gaussian_blur(img, kernel_size: int, sigma: float):
  """torchvision `gaussian_blur` (separable, reflect padding) of img [H, W, C] → [H, W, C] float32.

  Implemented as two dense matrix products (rows, then columns) with the padding folded into the
  matrices: exact same weights as the padded convolution, accelerator friendly.
  """
  if kernel_size % 2 != 1 or kernel_size < 1:
    raise ValueError(f'gaussian_blur: kernel_size must be a positive odd integer, got {kernel_size}')
  img = jnp.asarray(img, jnp.float32)
  h, w = img.shape[:2]
  bh = jnp.asarray(_blur_matrix(h, kernel_size, float(sigma)))
  bw = jnp.asarray(_blur_matrix(w, kernel_size, float(sigma)))
  hp = jax.lax.Precision.HIGHEST
  out = jnp.einsum('ij,jwc->iwc', bh, img, precision=hp)
  return jnp.einsum('kw,iwc->ikc', bw, out, precision=hp)


@functools.partial(jax.jit, static_argnames=('kernel_size', 'sigma'))
def blur_into_black(img, kernel_size: int = 21, sigma: float | None = None):
  """Hole filling of `geometry.py :: blur_into_black` (§4.8 step 6). img [H, W, 3] → [H, W, 3] float32.

  Pixels whose channel sum is exactly 0 get blur(img)/max(blur(non-black mask), 1e-7) (normalised
  Gaussian fill, kernel `kernel_size`, σ = kernel_size/4 by default); then the whole image gets a 3×3
  Gaussian blur with σ 0.6. Genuinely black pixels are refilled too (reference behaviour, §6 item 9).
  """
  sigma = kernel_size / 4.0 if sigma is None else sigma
  img = jnp.asarray(img, jnp.float32)
  black = jnp.sum(img, axis=-1) == 0.0
  blur_img = gaussian_blur(img, kernel_size, sigma)
  blur_mask = gaussian_blur((~black).astype(jnp.float32)[..., None], kernel_size, sigma)
  leak = blur_img / jnp.maximum(blur_mask, 1e-7)
  filled = jnp.where(black[..., None], leak, img)
  return gaussian_blur(filled, 3, 0.6)


@functools.lru_cache(maxsize=64)
def _bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
  """[n_out, n_in] interpolation matrix of torch `F.interpolate(mode='bilinear', align_corners=False)`
  along one axis (no antialias): src = max((dst + 0.5)·n_in/n_out − 0.5, 0)."""
  # float32 coordinate arithmetic, as torch's CPU/GPU kernels for float32 images (opmath = float).
  f32 = np.float32
  scale = f32(n_in) / f32(n_out)
  mat = np.zeros((n_out, n_in))
  for d in range(n_out):
    src = max(f32(scale * (f32(d) + f32(0.5)) - f32(0.5)), f32(0.0))
    i0 = min(int(src), n_in - 1)
    i1 = i0 + (1 if i0 < n_in - 1 else 0)
    lam = f32(src - f32(i0))
    mat[d, i0] += 1.0 - lam
    mat[d, i1] += lam
  return mat.astype(np.float32)


@functools.partial(jax.jit, static_argnames=('height', 'width'))
def resize_bilinear(img, height: int, width: int):
  """img [H, W, C] → [height, width, C] like torch bilinear, align_corners=False, antialias off."""
  img = jnp.asarray(img, jnp.float32)
  h, w = img.shape[:2]
  if (h, w) == (height, width):
    return img
  rh = jnp.asarray(_bilinear_matrix(h, height))
  rw = jnp.asarray(_bilinear_matrix(w, width))
  hp = jax.lax.Precision.HIGHEST
  out = jnp.einsum('ij,jwc->iwc', rh, img, precision=hp)
  return jnp.einsum('kw,iwc->ikc', rw, out, precision=hp)


# ------------------------------------------------------------------------------------------ full pipeline

@functools.partial(jax.jit, static_argnames=('render_height', 'render_width', 'out_height', 'out_width',
                                             'blur_kernel', 'blur_sigma', 'spread_radius'))
def render_view(points, colors, k_render, c2w, valid=None, strength=None, *, render_height: int = 280,
                render_width: int = 420, out_height: int = 256, out_width: int = 384, blur_kernel: int = 21,
                blur_sigma: float | None = None, spread_radius: int = 1):
  """One view of a point cloud exactly as the GCD data pipeline (§4.8): splat at render size, hole-fill
  and blur, resize, map to [−1, 1].

  points [N, 3], colors [N, 3] in [0, 1], k_render [3, 3] = pixel intrinsics at the *render* size (see
  `cameras.render_intrinsics`), c2w [4, 4], valid [N] bool or None.
  → [out_height, out_width, 3] float32 in [−1, 1].
  The single-view "reproject" baseline of §4.8 item 8 is `reproject_view` (blur kernel 3, σ 0.75).
  """
  img, _ = render_point_cloud(points, colors, k_render, c2w, render_height, render_width, strength=strength,
                              valid=valid, spread_radius=spread_radius)
  img = blur_into_black(img, blur_kernel, blur_sigma)
  img = resize_bilinear(img, out_height, out_width)
  return img * 2.0 - 1.0


def reproject_view(points, colors, k_render, c2w, valid=None, **kwargs):
  """§4.8 item 8: `render_view` with blur kernel 3 (σ 0.75), meant for the points of the source view only
  (Kubric pcl view 4, PD view 16); the evaluation derives visible/occluded masks from it (pixels that
  stay exactly black = nothing projected nearby)."""
  kwargs.setdefault('blur_kernel', 3)
  return render_view(points, colors, k_render, c2w, valid, **kwargs)


def render_video(points, colors, k_render, c2ws, valid=None, **kwargs):
  """`render_view` per frame with `lax.map` (bounded memory). points [T, N, 3], colors [T, N, 3],
  c2ws [T, 4, 4], valid [T, N] or None → [T, out_height, out_width, 3] in [−1, 1]."""
  if valid is None:
    valid = jnp.ones(jnp.shape(points)[:2], bool)

  def one(args):
    p, c, e, v = args
    return render_view(p, c, k_render, e, v, **kwargs)

  return jax.lax.map(one, (jnp.asarray(points, jnp.float32), jnp.asarray(colors, jnp.float32),
                           jnp.asarray(c2ws, jnp.float32), jnp.asarray(valid, bool)))
