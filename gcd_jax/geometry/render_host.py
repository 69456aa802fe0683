"""The §4.8 renderer on a host CPU core (Numba): what the input pipeline runs.

Same math as the jitted `render` (`render_point_cloud`, `render_view`), tested equal to it and to the
float64 reference formula Σw·c/Σw (tests/test_render.py). Why a second implementation: XLA:CPU runs the
renderer as separate passes over the points — projection ~7–12 ns/point, each scatter or gather
~3 ns/point, [N, C] scatters far slower — ~150 ms per 3.5 M-point Kubric-4D view, and the pipeline
renders 28 views per example on host cores. Here one view is ~35–45 ms on one core: a vectorised
projection loop, one compaction pass over the kept points (~45–55 % of a Kubric cloud; dropping the others
changes nothing), NumPy's SIMD exp, one float64 accumulation pass, and pixel-level loops. `render` stays
the implementation for jit / accelerators. On a 3.5 M-point Kubric-size frame both are equally close to
the float64 reference (max |Δ| ~4e-3–9e-3 at ~10 of 117 600 pixels, mean ~4e-7): a point whose float32
projection lands on a pixel border can fall into the neighbouring pixel — float32 rounding, in both, at
different points (host vs jitted: same size of difference, mean 3e-7).

Per view (N points, one camera), with the stabiliser of `render` (all float32 unless noted):
  project    exactly `render.project_points`: d = x − t, x_c = d·R, uvw = K·x_c, trunc(uv + 0.5), keep
             0 ≤ u < W, 0 ≤ v < H, z > 0.1.
  compact    kept (and valid) points' (index, pixel, z); per pixel the minimum z; the maximum kept z.
  log-weight s = −(z'/z'_max·2 − 1)·strength (§4.8 step 3). M_q = s(min z of q) is exactly the per-pixel
             max of s (`segment_max` in `render`): s is monotone non-increasing in z, and so is its
             float32 evaluation.
  accumulate D_q = Σ exp(s − M_q), A_q = Σ exp(s − M_q)·c in float64 (no n·ε error on pixels fed by
             thousands of points; `render` gets the same accuracy from a reference colour).
  combine    neighbour splats as pixel-level shifts of (M, D, A), stabilised by the max m_p over all
             contributions landing on a pixel (as `render.render_point_cloud`; D and A rounded to float32
             first, as there), then Σw·c/Σw, clamp.
  finish     `blur_into_black` + bilinear resize (+ ×2 − 1) with the very matrices of `render`
             (`_blur_matrix`, `_bilinear_matrix`) applied as sparse rows; the final 3×3 blur is folded
             into the resize matrices (one linear map), and the hole fill is evaluated only at black
             pixels (elsewhere `where(black, fill, img)` keeps img).
float16 inputs (the stores' dtype) are read through a 65536-entry float32 table (exact; Numba has no
float16 loads), so a clip is never cast to float32 as a whole.
"""

from __future__ import annotations

import functools
import math
import threading

import numba
import numpy as np

from gcd_jax.geometry import render

_F32 = np.float32
_HALF = _F32(0.5)
_ONE = _F32(1.0)
_TWO = _F32(2.0)
_ZERO = _F32(0.0)
_MIN_DEPTH = _F32(render.MIN_DEPTH)
_PD_THRESHOLD = _F32(render.PD_DEPTH_THRESHOLD)
_PD_CLAMP = _F32(render.PD_SQRT_DEPTH_CLAMP)
_FILL_EPS = _F32(1e-7)   # blur_into_black's max(blur(mask), 1e-7)
# float16 bit pattern → float32 value: exactly NumPy's (and XLA's) conversion.
F16_TABLE = np.arange(65536, dtype=np.uint16).view(np.float16).astype(np.float32)

# error_model='numpy': no Python ZeroDivisionError checks, which would keep LLVM from vectorising.
_njit = functools.partial(numba.njit, cache=True, nogil=True, error_model='numpy')


# ------------------------------------------------------------------------------------------------ points

@_njit
def _f16_to_planar(bits, table, out):
  """bits [N, 3] uint16 (float16 patterns) → out [3, N] float32."""
  for i in range(bits.shape[0]):
    out[0, i] = table[bits[i, 0]]
    out[1, i] = table[bits[i, 1]]
    out[2, i] = table[bits[i, 2]]


@_njit
def _f32_to_planar(points, out):
  for i in range(points.shape[0]):
    out[0, i] = points[i, 0]
    out[1, i] = points[i, 1]
    out[2, i] = points[i, 2]


@_njit
def _f16_to_f32(bits, table, out):
  flat_in, flat_out = bits.ravel(), out.ravel()
  for i in range(flat_in.shape[0]):
    flat_out[i] = table[flat_in[i]]


@_njit
def _unproject_to_planar(depth, k, c2w, out):
  """depth [V, H, W] float32 planar, k [V, 3, 3], c2w [V, 4, 4] float32 → out [3, V·H·W] world points, as
  the pipeline's jitted unprojection (§4.4): x = (u − cx)/fx·z, y = (v − cy)/fy·z, world = R·(x, y, z) + t."""
  nv, h, w = depth.shape
  ox, oy, oz = out[0], out[1], out[2]
  xn = np.empty(w, np.float32)
  for v in range(nv):
    fx, fy, cx, cy = k[v, 0, 0], k[v, 1, 1], k[v, 0, 2], k[v, 1, 2]
    r00, r01, r02, t0 = c2w[v, 0, 0], c2w[v, 0, 1], c2w[v, 0, 2], c2w[v, 0, 3]
    r10, r11, r12, t1 = c2w[v, 1, 0], c2w[v, 1, 1], c2w[v, 1, 2], c2w[v, 1, 3]
    r20, r21, r22, t2 = c2w[v, 2, 0], c2w[v, 2, 1], c2w[v, 2, 2], c2w[v, 2, 3]
    for col in range(w):
      xn[col] = (_F32(col) - cx) / fx
    for row in range(h):
      yn = (_F32(row) - cy) / fy
      base = (v * h + row) * w
      drow = depth[v, row]
      for col in range(w):
        z = drow[col]
        xc = xn[col] * z
        yc = yn * z
        ox[base + col] = xc * r00 + yc * r01 + z * r02 + t0
        oy[base + col] = xc * r10 + yc * r11 + z * r12 + t1
        oz[base + col] = xc * r20 + yc * r21 + z * r22 + t2


def planar_points(points, out=None) -> np.ndarray:
  """points [N, 3] float16/float32/float64 → [3, N] float32 (the layout the projection loop vectorises),
  written into `out` when given (reusing a buffer saves the page faults of a fresh 40 MB array)."""
  points = np.asarray(points)
  out = np.empty((3, points.shape[0]), np.float32) if out is None else out
  if points.dtype == np.float16:
    _f16_to_planar(np.ascontiguousarray(points).view(np.uint16), F16_TABLE, out)
  else:
    _f32_to_planar(np.ascontiguousarray(points, np.float32), out)
  return out


def unproject_planar(depth, intrinsics, extrinsics, out=None) -> np.ndarray:
  """One frame's merged cloud from its RGB-D views (§4.4): depth [V, H, W] planar (float16 as stored, or
  float32), intrinsics [V, 3, 3], extrinsics [V, 4, 4] c2w → [3, V·H·W] float32 world points (into `out`
  when given)."""
  depth = np.ascontiguousarray(depth)
  if depth.dtype == np.float16:
    d32 = scratch_array('depth32', depth.shape, np.float32)
    _f16_to_f32(depth.view(np.uint16), F16_TABLE, d32)
  else:
    d32 = np.ascontiguousarray(depth, np.float32)
  out = np.empty((3, depth.size), np.float32) if out is None else out
  _unproject_to_planar(d32, np.ascontiguousarray(intrinsics, np.float32), np.ascontiguousarray(extrinsics, np.float32),
                       out)
  return out


# ------------------------------------------------------------------------------------------------ splat

@_njit
def _project(planar, k, c2w, height, width, ids, zs):
  """`render.project_points` (same float32 operation order) → ids [N] (pixel, −1 if not kept), zs [N]."""
  fw, fh = _F32(width), _F32(height)
  tx, ty, tz = c2w[0, 3], c2w[1, 3], c2w[2, 3]
  r00, r01, r02 = c2w[0, 0], c2w[0, 1], c2w[0, 2]
  r10, r11, r12 = c2w[1, 0], c2w[1, 1], c2w[1, 2]
  r20, r21, r22 = c2w[2, 0], c2w[2, 1], c2w[2, 2]
  k00, k01, k02 = k[0, 0], k[0, 1], k[0, 2]
  k10, k11, k12 = k[1, 0], k[1, 1], k[1, 2]
  k20, k21, k22 = k[2, 0], k[2, 1], k[2, 2]
  xs, ys, zw = planar[0], planar[1], planar[2]
  wi = np.int32(width)
  for i in range(xs.shape[0]):
    d0 = xs[i] - tx
    d1 = ys[i] - ty
    d2 = zw[i] - tz
    x0 = d0 * r00 + d1 * r10 + d2 * r20
    x1 = d0 * r01 + d1 * r11 + d2 * r21
    x2 = d0 * r02 + d1 * r12 + d2 * r22
    w0 = x0 * k00 + x1 * k01 + x2 * k02
    w1 = x0 * k10 + x1 * k11 + x2 * k12
    w2 = x0 * k20 + x1 * k21 + x2 * k22
    su = w0 / w2 + _HALF
    sv = w1 / w2 + _HALF
    ok = (su > -_ONE) & (su < fw) & (sv > -_ONE) & (sv < fh) & (x2 > _MIN_DEPTH)
    # Clamped only so that the (unused) int cast of rejected points stays defined; trunc toward zero.
    pid = np.int32(min(max(sv, _ZERO), fh)) * wi + np.int32(min(max(su, _ZERO), fw))
    ids[i] = pid if ok else np.int32(-1)
    zs[i] = x2


@_njit
def _transformed_depth(z, is_pd):
  """z' of §4.8 step 3, as `render.soft_zbuffer_log_weights`."""
  if is_pd:
    return min(max(np.sqrt(max(z, _ZERO)), _ZERO), _PD_CLAMP)
  return z


@_njit
def _compact_and_log_weights(ids, zs, valid, has_valid, num_pix, strength, has_strength, kidx, kpid, kls):
  """Kept points → (count m, big_m [num_pix] f32 = max own log-weight (−inf: none)); kidx/kpid/kls[:m]
  = point index, pixel, s − M_pixel (ready for exp)."""
  zmin = np.full(num_pix, np.inf, np.float32)
  zmax = _F32(-np.inf)
  m = 0
  for i in range(ids.shape[0]):
    p = ids[i]
    if p >= 0 and (not has_valid or valid[i]):
      z = zs[i]
      kidx[m] = i
      kpid[m] = p
      kls[m] = z
      m += 1
      zmin[p] = min(zmin[p], z)  # min/max, not ifs: 2× faster (no mispredicted branches)
      zmax = max(zmax, z)
  big_m = np.full(num_pix, -np.inf, np.float32)
  if m == 0:
    return m, big_m
  is_pd = zmax >= _PD_THRESHOLD
  ztmax = _transformed_depth(zmax, is_pd)  # z' is monotone: its max is z' of the max z
  if has_strength:
    st = strength
  elif is_pd:
    st = _F32(render.PD_STRENGTH)
  else:
    st = _F32(render.KUBRIC_STRENGTH)
  for q in range(num_pix):
    if zmin[q] < np.inf:
      big_m[q] = -(_transformed_depth(zmin[q], is_pd) / ztmax * _TWO - _ONE) * st
  for j in range(m):
    kls[j] = -(_transformed_depth(kls[j], is_pd) / ztmax * _TWO - _ONE) * st - big_m[kpid[j]]
  return m, big_m


@_njit
def _accumulate(kidx, kpid, e, m, colors, d_own, a_own):
  """d_own [num_pix] ← Σ e, a_own [num_pix, C] ← Σ e·c, float64 (c as stored: uint8 values or floats).
  (Separate arrays: 1.5× faster than one [num_pix, 1 + C] array.)"""
  nc = colors.shape[1]
  d_own[:] = 0.0
  a_own[:] = 0.0
  for j in range(m):
    q = kpid[j]
    w = np.float64(e[j])
    i = kidx[j]
    d_own[q] += w
    for ch in range(nc):
      a_own[q, ch] += w * colors[i, ch]


@_njit
def _combine_exponents(big_m, height, width, offsets, log_nw, t):
  """Stabiliser m_p = max over the contributions landing on p (own M_p, neighbours M_q + log 0.02) and
  t[o, p] = (log-weight of source o) − m_p (−inf: source absent or p empty). → m [H·W]."""
  m = big_m.copy()
  for o in range(offsets.shape[0]):
    dx, dy = offsets[o, 0], offsets[o, 1]
    for y in range(max(dy, 0), min(height, height + dy)):
      for x in range(max(dx, 0), min(width, width + dx)):
        m[y * width + x] = max(m[y * width + x], big_m[(y - dy) * width + x - dx] + log_nw)
  t[:] = -np.inf
  for p in range(height * width):
    if m[p] != -np.inf:
      t[0, p] = big_m[p] - m[p]
  for o in range(offsets.shape[0]):
    dx, dy = offsets[o, 0], offsets[o, 1]
    for y in range(max(dy, 0), min(height, height + dy)):
      for x in range(max(dx, 0), min(width, width + dx)):
        p = y * width + x
        if m[p] != -np.inf:
          t[1 + o, p] = big_m[(y - dy) * width + x - dx] + log_nw - m[p]
  return m


@_njit
def _combine(f, m, d64, a64, color_div, height, width, offsets, clamp):
  """Σ over own + neighbour sources of f·(D, A) (f = exp of `_combine_exponents`' t), then Σw·c/Σw
  (§4.8 steps 4–5), in float32 like `render.render_point_cloud`. → (img [H, W, C], nonempty [H, W])."""
  nc = a64.shape[1]
  num_pix = height * width
  d_own = np.empty(num_pix, np.float32)
  a_own = np.empty((num_pix, nc), np.float32)
  for p in range(num_pix):
    d_own[p] = _F32(d64[p])
    for ch in range(nc):
      a_own[p, ch] = _F32(a64[p, ch] / color_div)
  img = np.zeros((height, width, nc), np.float32)
  nonempty = np.zeros((height, width), np.bool_)
  num = np.zeros(nc, np.float32)
  for y in range(height):
    for x in range(width):
      p = y * width + x
      if m[p] == -np.inf:
        continue
      nonempty[y, x] = True
      den = f[0, p] * d_own[p]
      for ch in range(nc):
        num[ch] = f[0, p] * a_own[p, ch]
      for o in range(offsets.shape[0]):
        sx, sy = x - offsets[o, 0], y - offsets[o, 1]
        if 0 <= sx < width and 0 <= sy < height:
          q = sy * width + sx
          fo = f[1 + o, p]
          den += fo * d_own[q]
          for ch in range(nc):
            num[ch] += fo * a_own[q, ch]
      for ch in range(nc):
        v = num[ch] / den
        if clamp:
          v = min(max(v, _ZERO), _ONE)
        img[y, x, ch] = v
  return img, nonempty


_LOCAL = threading.local()


def scratch_array(name: str, shape, dtype) -> np.ndarray:
  """A per-thread work buffer reused across views and frames: fresh 10–40 MB arrays cost more in page
  faults than the loops that fill them. The contents are garbage; the next call with `name` reuses it."""
  bufs = _LOCAL.__dict__.setdefault('bufs', {})
  shape = tuple(shape)
  buf = bufs.get(name)
  if buf is None or buf.shape != shape or buf.dtype != dtype:
    buf = bufs[name] = np.empty(shape, dtype)
  return buf


@functools.lru_cache(maxsize=8)
def _offsets(spread_radius: int) -> np.ndarray:
  return np.asarray(render._neighbor_offsets(spread_radius), np.int64).reshape(-1, 2)  # pylint: disable=protected-access


def splat_planar(planar, colors, k_pixels, c2w, height: int, width: int, *, strength=None, valid=None,
                 spread_radius: int = 1, neighbor_weight: float = render.NEIGHBOR_WEIGHT, clamp: bool = True):
  """§4.8 steps 2–5 of one view from planar points [3, N] float32 and colors [N, C] (uint8 → c/255, or
  float) → (image [H, W, C] float32, nonempty [H, W] bool)."""
  colors = np.asarray(colors)
  color_div = 255.0 if colors.dtype == np.uint8 else 1.0
  if colors.dtype not in (np.uint8, np.float32):
    colors = colors.astype(np.float32)
  n = planar.shape[1]
  num_pix = height * width
  ids, zs = scratch_array('ids', (n,), np.int32), scratch_array('zs', (n,), np.float32)
  kidx, kpid = scratch_array('kidx', (n,), np.int32), scratch_array('kpid', (n,), np.int32)
  kls = scratch_array('kls', (n,), np.float32)
  d64 = scratch_array('d_own', (num_pix,), np.float64)
  a64 = scratch_array('a_own', (num_pix, colors.shape[1]), np.float64)
  _project(planar, np.asarray(k_pixels, np.float32), np.asarray(c2w, np.float32), height, width, ids, zs)
  has_valid = valid is not None
  valid_arr = np.asarray(valid, bool) if has_valid else np.ones(1, bool)
  m, big_m = _compact_and_log_weights(ids, zs, valid_arr, has_valid, num_pix,
                                      _F32(0.0 if strength is None else strength), strength is not None,
                                      kidx, kpid, kls)
  e = np.exp(kls[:m], out=kls[:m])  # NumPy's SIMD exp (~10× Numba's scalar one); every argument is ≤ 0
  _accumulate(kidx, kpid, e, m, colors, d64, a64)
  offsets = _offsets(spread_radius)
  t = scratch_array('combine_t', (1 + offsets.shape[0], num_pix), np.float32)
  m_pix = _combine_exponents(big_m, height, width, offsets, _F32(math.log(neighbor_weight)), t)
  f = np.exp(t, out=t)
  return _combine(f, m_pix, d64, a64, color_div, height, width, offsets, clamp)


def render_point_cloud_host(points, colors, k_pixels, c2w, height: int, width: int, *, strength=None,
                            valid=None, spread_radius: int = 1, neighbor_weight: float = render.NEIGHBOR_WEIGHT,
                            clamp: bool = True):
  """`render.render_point_cloud` on the host: points [N, 3] (float16/32), colors [N, C] (uint8 → /255, or
  float in [0, 1]), same keywords → (image [H, W, C] float32, nonempty [H, W] bool) as NumPy arrays."""
  return splat_planar(planar_points(points), colors, k_pixels, c2w, height, width, strength=strength,
                      valid=valid, spread_radius=spread_radius, neighbor_weight=neighbor_weight, clamp=clamp)


# ------------------------------------------------------------------------------------------------ finish

def _sparse_rows(mat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Dense [n_out, n_in] → (idx [n_out, K] int64, val [n_out, K] float64), K = max nonzeros per row
  (padding: index 0, value 0)."""
  nnz = max(int((mat[r] != 0).sum()) for r in range(mat.shape[0]))
  idx = np.zeros((mat.shape[0], nnz), np.int64)
  val = np.zeros((mat.shape[0], nnz), np.float64)
  for r in range(mat.shape[0]):
    cols = np.flatnonzero(mat[r])
    idx[r, :len(cols)] = cols
    val[r, :len(cols)] = mat[r, cols]
  return idx, val


@functools.lru_cache(maxsize=16)
def _finish_operators(h: int, w: int, out_h: int, out_w: int, kernel_size: int, sigma: float):
  """Sparse rows of the hole-fill blur (the float32 matrices of `render.gaussian_blur`) and of
  resize ∘ 3×3 blur (the product of `render`'s float32 matrices, in float64)."""
  fill_h = _sparse_rows(render._blur_matrix(h, kernel_size, sigma).astype(np.float64))  # pylint: disable=protected-access
  fill_w = _sparse_rows(render._blur_matrix(w, kernel_size, sigma).astype(np.float64))  # pylint: disable=protected-access
  def resize_blur(n, n_out):
    rs = render._bilinear_matrix(n, n_out).astype(np.float64) if n != n_out else np.eye(n)  # pylint: disable=protected-access
    return _sparse_rows(rs @ render._blur_matrix(n, 3, 0.6).astype(np.float64))  # pylint: disable=protected-access
  return fill_h, fill_w, resize_blur(h, out_h), resize_blur(w, out_w)


@_njit
def _fill_black(img, fh_idx, fh_val, fw_idx, fw_val):
  """blur_into_black's hole fill (before its final 3×3 blur): pixels with channel sum exactly 0 get
  blur(img)/max(blur(non-black mask), 1e-7). Evaluated only at those pixels (the horizontal pass only
  where the vertical one reads it). img [H, W, C] float32 → new array."""
  h, w, nc = img.shape
  black = np.zeros((h, w), np.bool_)
  black_rows = np.zeros(h, np.bool_)
  any_black = False
  for y in range(h):
    for x in range(w):
      s = _ZERO
      for ch in range(nc):
        s += img[y, x, ch]
      if s == _ZERO:
        black[y, x] = True
        black_rows[y] = True
        any_black = True
  out = img.copy()
  if not any_black:
    return out
  need = np.zeros((h, w), np.bool_)  # where the second (vertical) pass reads the first one
  for y in range(h):
    if black_rows[y]:
      for x in range(w):
        if black[y, x]:
          for t in range(fh_idx.shape[1]):
            if fh_val[y, t] != 0.0:
              need[fh_idx[y, t], x] = True
  rows = np.zeros((h, w, nc + 1), np.float64)  # blurred along x: img channels, then the non-black mask
  for y in range(h):
    for x in range(w):
      if not need[y, x]:
        continue
      for t in range(fw_idx.shape[1]):
        xx = fw_idx[x, t]
        wt = fw_val[x, t]
        for ch in range(nc):
          rows[y, x, ch] += wt * img[y, xx, ch]
        if not black[y, xx]:
          rows[y, x, nc] += wt
  acc = np.zeros(nc + 1, np.float64)
  for y in range(h):
    if not black_rows[y]:
      continue
    for x in range(w):
      if not black[y, x]:
        continue
      acc[:] = 0.0
      for t in range(fh_idx.shape[1]):
        yy = fh_idx[y, t]
        wt = fh_val[y, t]
        for ch in range(nc + 1):
          acc[ch] += wt * rows[yy, x, ch]
      den = max(_F32(acc[nc]), _FILL_EPS)
      for ch in range(nc):
        out[y, x, ch] = _F32(acc[ch]) / den
  return out


@_njit
def _resize_blur(img, rh_idx, rh_val, rw_idx, rw_val, scale, offset):
  """out = Rh·img·Rwᵀ per channel (float64 sums), then ·scale + offset, float32."""
  h, w, nc = img.shape
  out_h, out_w = rh_idx.shape[0], rw_idx.shape[0]
  tmp = np.zeros((h, out_w, nc), np.float64)
  for y in range(h):
    for x in range(out_w):
      for t in range(rw_idx.shape[1]):
        xx = rw_idx[x, t]
        wt = rw_val[x, t]
        for ch in range(nc):
          tmp[y, x, ch] += wt * img[y, xx, ch]
  out = np.empty((out_h, out_w, nc), np.float32)
  for y in range(out_h):
    for x in range(out_w):
      for ch in range(nc):
        s = 0.0
        for t in range(rh_idx.shape[1]):
          s += rh_val[y, t] * tmp[rh_idx[y, t], x, ch]
        out[y, x, ch] = _F32(s) * scale + offset
  return out


def finish_view(img, out_height: int, out_width: int, blur_kernel: int = 21, blur_sigma: float | None = None):
  """`render.render_view` after the splat: blur_into_black, bilinear resize, map to [−1, 1].
  img [H, W, 3] float32 in [0, 1] → [out_height, out_width, 3] float32."""
  sigma = blur_kernel / 4.0 if blur_sigma is None else float(blur_sigma)
  h, w = img.shape[:2]
  (fh_i, fh_v), (fw_i, fw_v), (rh_i, rh_v), (rw_i, rw_v) = _finish_operators(h, w, out_height, out_width,
                                                                             blur_kernel, sigma)
  filled = _fill_black(np.ascontiguousarray(img, np.float32), fh_i, fh_v, fw_i, fw_v)
  return _resize_blur(filled, rh_i, rh_v, rw_i, rw_v, _TWO, -_ONE)


def render_view_host(points, colors, k_render, c2w, valid=None, strength=None, *, render_height: int = 280,
                     render_width: int = 420, out_height: int = 256, out_width: int = 384, blur_kernel: int = 21,
                     blur_sigma: float | None = None, spread_radius: int = 1):
  """`render.render_view` on the host: points [N, 3] (float16/32), colors [N, 3] uint8 or float in [0, 1]
  → [out_height, out_width, 3] float32 in [−1, 1]."""
  img, _ = splat_planar(planar_points(points), colors, k_render, c2w, render_height, render_width,
                        strength=strength, valid=valid, spread_radius=spread_radius)
  return finish_view(img, out_height, out_width, blur_kernel, blur_sigma)
