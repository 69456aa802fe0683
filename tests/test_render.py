"""The §4.8 point-cloud renderer: known geometry, occlusion, equality with the reference formula
Σw·c/Σw computed in float64 (where float32 naive exp overflows), blur/resize vs torch, round trip.
Each splat test runs both implementations: the jitted `render` and the host (Numba) `render_host`."""

import math

import jax
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gcd_jax.geometry import cameras, pointcloud, procedural, render, render_host

# Both implementations of §4.8 steps 2–5, same signature.
RENDERERS = {'jax': render.render_point_cloud, 'host': render_host.render_point_cloud_host}
both_renderers = pytest.mark.parametrize('renderer', sorted(RENDERERS))


def reference_render(points, colors, k, c2w, h, w, strength=None, log_space=False):
  """float64 NumPy transcription of `project_points_to_pixels` + `spreaded_index_add` (radius 1).

  log_space=True evaluates the same Σw·c/Σw with w = exp(s) through a per-pixel log-sum-exp (for
  strengths where even float64 exp overflows)."""
  xc = (np.asarray(points, np.float64) - c2w[:3, 3]) @ c2w[:3, :3]
  uvw = xc @ k.T
  uv = uvw[:, :2] / uvw[:, 2:3]
  uvi = np.trunc(uv + 0.5).astype(np.int64)
  z = xc[:, 2]
  m = (uvi[:, 0] >= 0) & (uvi[:, 0] < w) & (uvi[:, 1] >= 0) & (uvi[:, 1] < h) & (z > 0.1)
  rgb, uvi, z = np.asarray(colors, np.float64)[m], uvi[m], z[m]
  inds = uvi[:, 1] * w + uvi[:, 0]
  if z.max() >= 64:
    s, z = 256.0, np.clip(np.sqrt(z), 0, 32)
  else:
    s = 512.0
  s = s if strength is None else strength
  logw = -(z / z.max() * 2 - 1) * s
  ids, lws = [inds], [logw]
  for dx, dy in ((0, 1), (1, 0), (1, 1)):
    x, y = inds % w + dx, inds // w + dy
    ok = (x < w) & (y < h)
    ids.append((y * w + x)[ok])
    lws.append(logw[ok] + math.log(0.02))
  cols = [rgb] + [rgb[(inds % w + dx < w) & (inds // w + dy < h)] for dx, dy in ((0, 1), (1, 0), (1, 1))]
  ids, lws, cols = np.concatenate(ids), np.concatenate(lws), np.concatenate(cols)
  if log_space:
    mx = np.full(h * w, -np.inf)
    np.maximum.at(mx, ids, lws)
    wts = np.exp(lws - mx[ids])
  else:
    wts = np.exp(lws)
  den = np.zeros(h * w)
  num = np.zeros((h * w, rgb.shape[1]))
  np.add.at(den, ids, wts)
  np.add.at(num, ids, wts[:, None] * cols)
  den[den <= 0] = -1  # reference: empty pixels → −1 → clamp gives black
  return np.clip(num / den[:, None], 0, 1).reshape(h, w, -1), (den > 0).reshape(h, w)


def _psnr(a, b, mask=None):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if mask is not None:
    a, b = a[mask], b[mask]
  return 10 * np.log10(1.0 / np.mean((a - b) ** 2))


K_SMALL = cameras.intrinsics_matrix(36.0, 36.0, 18.0, 12.0)
H_SMALL, W_SMALL = 24, 36


def test_projection_truncation_bounds_and_depth():
  k = cameras.intrinsics_matrix(10.0, 10.0, 0.0, 0.0)
  c2w = np.eye(4)  # camera at the origin looking along +z, x right, y down
  # Points at z = 1 with uv = 10·(x, y): −0.7 → trunc(−0.2) = 0 kept (C truncation quirk); −1.6 → −1 out;
  # W − 0.6 = 9.4 → 9 kept; W − 0.4 → 10 out; z ≤ 0.1 out.
  pts = np.array([[-0.07, 0.32, 1], [-0.16, 0.3, 1], [0.94, 0.5, 1], [0.96, 0.5, 1], [0.01, 0.01, 0.1],
                  [0.005, 0.005, 0.11]])
  uv, z, kept = render.project_points(pts, k, c2w, 10, 10)
  np.testing.assert_array_equal(np.asarray(kept), [True, False, True, False, False, True])
  np.testing.assert_array_equal(np.asarray(uv)[[0, 2, 5]], [[0, 3], [9, 5], [0, 0]])
  np.testing.assert_allclose(np.asarray(z), pts[:, 2], rtol=1e-6)


@both_renderers
def test_plane_lands_on_expected_pixels(renderer):
  """A fronto-parallel square (dense points) seen head-on covers exactly the predicted pixel block,
  plus the one-pixel right/down 0.02 splat border."""
  c2w = cameras.extrinsics_from_look_at([0.0, -10.0, 1.0], [0.0, 0.0, 1.0])  # looks along +y
  # World square x ∈ [−1, 1], z ∈ [0.5, 1.5] at y = 0 (distance 10): u = 18 + 36·x/10, v = 12 − 36·(z−1)/10.
  xs, zs = np.meshgrid(np.linspace(-1, 1, 201), np.linspace(0.5, 1.5, 101))
  pts = np.stack([xs.ravel(), np.zeros(xs.size), zs.ravel()], -1)
  col = np.tile([[0.2, 0.6, 0.9]], (len(pts), 1))
  img, mask = RENDERERS[renderer](pts, col, K_SMALL, c2w, H_SMALL, W_SMALL)
  img, mask = np.asarray(img), np.asarray(mask)
  u0, u1 = int(18 - 3.6 + 0.5), int(18 + 3.6 + 0.5)   # trunc(u + 0.5) of the extreme points
  v0, v1 = int(12 - 1.8 + 0.5), int(12 + 1.8 + 0.5)
  expected = np.zeros((H_SMALL, W_SMALL), bool)
  expected[v0:v1 + 2, u0:u1 + 2] = True   # +1: the (1, 0), (0, 1), (1, 1) neighbour splats
  np.testing.assert_array_equal(mask, expected)
  np.testing.assert_allclose(img[mask], np.broadcast_to([0.2, 0.6, 0.9], img[mask].shape), atol=1e-6)
  np.testing.assert_array_equal(img[~mask], 0.0)


@both_renderers
def test_occlusion_resolves_to_nearer_surface(renderer):
  c2w = cameras.extrinsics_from_look_at([0.0, -10.0, 1.0], [0.0, 0.0, 1.0])
  g = np.stack(np.meshgrid(np.linspace(-1, 1, 81), np.linspace(0.5, 1.5, 41)), -1).reshape(-1, 2)
  near = np.stack([g[:, 0], np.full(len(g), -5.0), g[:, 1]], -1)          # 5 m from the camera, red
  far = np.stack([g[:, 0] * 3, np.full(len(g), 0.0), g[:, 1] * 1.5], -1)  # 10 m, blue, larger
  pts = np.concatenate([far, near])  # far points first: order must not matter
  col = np.concatenate([np.tile([0.0, 0.0, 1.0], (len(g), 1)), np.tile([1.0, 0.0, 0.0], (len(g), 1))])
  img, mask = RENDERERS[renderer](pts, col, K_SMALL, c2w, H_SMALL, W_SMALL)
  img = np.asarray(img)
  # Near square: u = 18 ± 7.2, v = 12 ± 3.6 → the interior is pure red (weight ratio exp(−512·(2·5/10)) ≈ 0).
  np.testing.assert_allclose(img[10:15, 13:24], np.broadcast_to([1, 0, 0], (5, 11, 3)), atol=1e-6)
  # Outside the near square but inside the far one: blue.
  np.testing.assert_allclose(img[12, 8:11], np.broadcast_to([0, 0, 1], (3, 3)), atol=1e-6)


@pytest.mark.parametrize('case', ['kubric_dense', 'kubric_wide_depth', 'pardom_far', 'extreme_strength',
                                  'procedural_scene'])
@both_renderers
def test_stable_renderer_equals_float64_reference(case, renderer):
  rng = np.random.default_rng({'kubric_dense': 0, 'kubric_wide_depth': 1, 'pardom_far': 2,
                               'extreme_strength': 3, 'procedural_scene': 4}[case])
  c2w = cameras.extrinsics_from_spherical([30.0, 20.0, 15.0])
  strength, log_space = None, False
  if case == 'kubric_dense':
    pts = rng.normal(size=(600, 3)) + [0, 0, 1]
  elif case == 'kubric_wide_depth':  # a Kubric-like depth range: 2 m (floor) … 55 m (dome)
    d = np.stack([rng.uniform(-0.5, 0.5, 400), rng.uniform(-1 / 3, 1 / 3, 400), np.ones(400)], -1)
    pts = cameras.camera_to_world(d * rng.uniform(2, 55, (400, 1)), c2w)
  elif case == 'pardom_far':  # max depth ≥ 64 → √z, clamp 32, strength 256
    pts = rng.uniform(-1, 1, size=(400, 3)) * [5, 5, 1] + [0, 0, 1]
    pts[:60] *= 200
    c2w = cameras.extrinsics_from_look_at([-8, 0, 8], [5.6, 0, 1.55])
  elif case == 'extreme_strength':  # exp(±2000) overflows even float64 → log-space float64 formula
    pts = rng.normal(size=(400, 3)) * 2 + [0, 0, 1]
    strength, log_space = 2000.0, True
  col = rng.uniform(size=(len(pts) if case != 'procedural_scene' else 1, 3)).astype(np.float32)
  if case == 'procedural_scene':  # merged 16-view cloud of a real (procedural) scene, 2 m … 55 m depths
    scene = procedural.generate_scene(0, procedural.scene_config('test', height=24, width=36))
    views = [scene.render(v, 0) for v in range(16)]
    pts, col = pointcloud.merge_views(np.stack([v[1] for v in views]), np.stack([v[0] for v in views]) / 255.0,
                                      scene.intrinsics, scene.extrinsics, ray_depth=True)
    col = col.astype(np.float32)
  pts = pts.astype(np.float32)  # the reference stores float16/float32 points; both sides see these values
  ref, ref_mask = reference_render(pts, col, K_SMALL, c2w.astype(np.float32).astype(np.float64), H_SMALL,
                                   W_SMALL, strength, log_space)
  out, mask = RENDERERS[renderer](pts, col, K_SMALL, c2w, H_SMALL, W_SMALL, strength=strength)
  out = np.asarray(out)
  assert np.all(np.isfinite(out))
  np.testing.assert_array_equal(np.asarray(mask), ref_mask)
  err = np.abs(out - ref).max()
  print(f'{case} ({renderer}): max |stable f32 − reference f64| = {err:.2e}')
  # Measured ≤ 7e-6. Bound: float32 camera depths carry ~6e-8 relative error, which the log-weights
  # −2·strength·z/z_max turn into ≲ 6e-5 absolute (a relative weight change of that size); the colour
  # error is ≤ ¼ of it times |Δc|.
  assert err < 2e-5, err
  if case == 'kubric_wide_depth':
    # The naive float32 formula overflows here (exp(−zn·512) > 3.4e38 once z < 0.41·z_max).
    with np.errstate(over='ignore', invalid='ignore'):
      zc = ((pts - c2w[:3, 3]) @ c2w[:3, :3])[:, 2].astype(np.float32)
      naive = np.exp(-(zc / zc.max() * np.float32(2) - np.float32(1)) * np.float32(512))
    assert np.isinf(naive).any()


@both_renderers
def test_valid_mask_ignores_padding_points(renderer):
  rng = np.random.default_rng(4)
  c2w = cameras.extrinsics_from_spherical([30.0, 20.0, 15.0])
  pts = (rng.normal(size=(200, 3)) + [0, 0, 1]).astype(np.float32)
  col = rng.uniform(size=(200, 3)).astype(np.float32)
  junk = np.concatenate([pts, rng.normal(size=(50, 3)).astype(np.float32) * 0.1 + [0, 0, 1]])
  junk_col = np.concatenate([col, np.ones((50, 3), np.float32)])
  valid = np.arange(250) < 200
  rend = RENDERERS[renderer]
  a, _ = rend(pts, col, K_SMALL, c2w, H_SMALL, W_SMALL)
  b, _ = rend(junk, junk_col, K_SMALL, c2w, H_SMALL, W_SMALL, valid=valid)
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-7)
  empty, m = rend(pts, col, K_SMALL, c2w, H_SMALL, W_SMALL, valid=np.zeros(200, bool))
  assert not np.asarray(m).any() and np.all(np.asarray(empty) == 0)


def _torch_gaussian_blur(img, k, sigma):
  """torchvision.transforms.functional.gaussian_blur (reflect pad + 2-D separable kernel), in torch."""
  k1 = torch.tensor(render.gaussian_kernel1d(k, sigma), dtype=torch.float32)
  k2 = (k1[:, None] * k1[None, :])[None, None].repeat(img.shape[-1], 1, 1, 1)
  t = torch.tensor(np.asarray(img)).permute(2, 0, 1)[None]
  t = F.pad(t, [k // 2] * 4, mode='reflect')
  return F.conv2d(t, k2, groups=img.shape[-1])[0].permute(1, 2, 0).numpy()


def test_gaussian_blur_and_resize_match_torch():
  rng = np.random.default_rng(5)
  img = rng.uniform(size=(280, 420, 3)).astype(np.float32)
  for k, s in ((21, 5.25), (3, 0.6), (3, 0.75)):
    np.testing.assert_allclose(np.asarray(render.gaussian_blur(img, k, s)), _torch_gaussian_blur(img, k, s),
                               atol=2e-6)
  ref = F.interpolate(torch.tensor(img).permute(2, 0, 1)[None], (256, 384), mode='bilinear',
                      align_corners=False)[0].permute(1, 2, 0).numpy()
  np.testing.assert_allclose(np.asarray(render.resize_bilinear(img, 256, 384)), ref, atol=3e-7)
  # torchvision's 1-D kernel: σ = 5.25, 21 taps, symmetric, normalised.
  k = render.gaussian_kernel1d(21, 5.25)
  np.testing.assert_allclose(k.sum(), 1.0)
  np.testing.assert_allclose(k[0] / k[10], math.exp(-0.5 * (10 / 5.25) ** 2))


def test_blur_into_black():
  # Half black, half constant grey: the normalised fill makes everything grey, and the final 3×3 blur
  # keeps a constant image constant.
  img = np.zeros((30, 40, 3), np.float32)
  img[:, :30] = 0.5   # the black band (10 px) lies within the kernel radius (10) of the grey content
  out = np.asarray(render.blur_into_black(img))
  np.testing.assert_allclose(out, 0.5, atol=1e-6)
  # Black pixels beyond the kernel radius get blur(mask) = 0 → 0/1e-7 = 0: they stay black.
  img = np.zeros((30, 60, 3), np.float32)
  img[:, :20] = 0.5
  out = np.asarray(render.blur_into_black(img))
  np.testing.assert_allclose(out[:, :29], 0.5, atol=1e-6)
  np.testing.assert_array_equal(out[:, 33:], 0.0)
  # Non-black pixels only see the final 3×3 σ 0.6 blur; black ones the normalised fill first.
  rng = np.random.default_rng(6)
  img = rng.uniform(0.1, 1, size=(30, 40, 3)).astype(np.float32)
  img[10:13, 10:13] = 0.0
  out = np.asarray(render.blur_into_black(img, 21))
  filled = img.copy()
  blur_img = _torch_gaussian_blur(img, 21, 5.25)
  blur_mask = _torch_gaussian_blur((img.sum(-1, keepdims=True) != 0).astype(np.float32), 21, 5.25)
  filled[10:13, 10:13] = (blur_img / np.maximum(blur_mask, 1e-7))[10:13, 10:13]
  np.testing.assert_allclose(out, _torch_gaussian_blur(filled, 3, 0.6), atol=2e-6)


def test_render_view_pipeline_shapes_and_range():
  rng = np.random.default_rng(7)
  pts = (rng.normal(size=(3000, 3)) * 2 + [0, 0, 1]).astype(np.float32)
  col = rng.uniform(size=(3000, 3)).astype(np.float32)
  k = cameras.render_intrinsics([[1.0, 0, -0.5], [0, -1.5, -0.5], [0, 0, -1]], 42, 28, 1.5)
  c2w = cameras.extrinsics_from_spherical([30.0, 20.0, 15.0])
  out = np.asarray(render.render_view(pts, col, k, c2w, render_height=28, render_width=42, out_height=16,
                                      out_width=24))
  assert out.shape == (16, 24, 3) and out.dtype == np.float32
  assert out.min() >= -1 and out.max() <= 1
  # Same as composing the pieces by hand.
  img, _ = render.render_point_cloud(pts, col, k, c2w, 28, 42)
  manual = np.asarray(render.resize_bilinear(render.blur_into_black(img, 21), 16, 24)) * 2 - 1
  np.testing.assert_allclose(out, manual, atol=1e-6)
  rep = np.asarray(render.reproject_view(pts, col, k, c2w, render_height=28, render_width=42, out_height=16,
                                         out_width=24))
  manual = np.asarray(render.resize_bilinear(render.blur_into_black(img, 3), 16, 24)) * 2 - 1
  np.testing.assert_allclose(rep, manual, atol=1e-6)
  vid = np.asarray(render.render_video(np.stack([pts, pts]), np.stack([col, col]), k, np.stack([c2w, c2w]),
                                       render_height=28, render_width=42, out_height=16, out_width=24))
  np.testing.assert_allclose(vid[1], out, atol=1e-6)


def test_roundtrip_unproject_render_same_camera():
  """A ray-cast procedural view, unprojected (Kubric ray depth, reference correction) and rendered from
  the same camera, reproduces the view. Every point projects back exactly onto its own pixel (the
  ray→plane approximation only moves points along their rays), so the only change is the 0.02 splats
  of the left/up/up-left neighbours: |err| ≤ 0.06/1.06·|Δc| on smooth surfaces (≈ 45–50 dB), while at
  silhouettes over a background > ~0.2 m behind (depth gap · 1024/z_max > ln 50) the nearer neighbour's
  splat wins (a 1-pixel right/down dilation of foreground objects, reference behaviour; measured 27.5 dB
  over the whole 64×96 view, where ~3% of the pixels are such edges). We require ≥ 45 dB away from
  depth edges (measured 57.0 dB) and ≥ 25 dB overall."""
  cfg = procedural.scene_config('test', height=64, width=96)
  scene = procedural.generate_scene(0, cfg)
  rgb, depth, _ = scene.render(4, 1)
  k, c2w = scene.intrinsics[4], scene.extrinsics[4]
  xyz = pointcloud.unproject_depth(depth, k, c2w, ray_depth=True, ray_correction='reference', dtype=np.float32)
  col = rgb.reshape(-1, 3).astype(np.float32) / 255.0
  img, mask = render.render_point_cloud(xyz, col, k, c2w, 64, 96)
  img = np.asarray(img)
  gt = rgb.astype(np.float32) / 255.0
  assert np.asarray(mask).all()
  planar = pointcloud.correct_depth_ball_plane(depth, k)
  gap = np.zeros_like(planar, bool)  # pixels whose up/left/up-left neighbour is much nearer
  for dy, dx in ((1, 0), (0, 1), (1, 1)):
    gap[dy:, dx:] |= planar[dy:, dx:] - planar[:64 - dy, :96 - dx] > 0.1
  psnr_all, psnr_smooth = _psnr(img, gt), _psnr(img, gt, ~gap)
  print(f'round trip PSNR all {psnr_all:.2f} dB, away from depth edges {psnr_smooth:.2f} dB')
  assert psnr_all >= 25.0 and psnr_smooth >= 45.0, (psnr_all, psnr_smooth)


def test_render_point_cloud_is_jittable_float32():
  f = jax.jit(render.render_point_cloud, static_argnames=('height', 'width'))
  rng = np.random.default_rng(8)
  pts = rng.normal(size=(100, 3)).astype(np.float32)
  col = rng.uniform(size=(100, 3)).astype(np.float32)
  c2w = cameras.extrinsics_from_spherical([30.0, 20.0, 15.0])
  img, mask = f(pts, col, K_SMALL, c2w, height=H_SMALL, width=W_SMALL)
  assert img.dtype == np.float32 and mask.dtype == bool
  assert not jax.config.jax_enable_x64


@pytest.mark.parametrize('case', ['kubric', 'pardom_far', 'holes_and_radius2'])
def test_host_renderer_equals_jitted_renderer(case):
  """`render_host` (what the input pipeline runs) against `render` on a merged procedural cloud, float16
  points and uint8 colours as the stores hold them: splat, and the whole view (hole fill, 3×3 blur folded
  into the resize, [−1, 1]) incl. the reproject baseline's kernel 3. Differences are float32 rounding
  (≲ 1e-5; a point whose float32 projection lands exactly on a pixel border could flip pixel in one of
  them — at 3.5 M-point Kubric size that happens to ~50 points, changing ≲ 12 pixels by up to 1e-2,
  equally far from the float64 reference for both)."""
  scene = procedural.generate_scene(1, procedural.scene_config('test', height=24, width=36))
  views = [scene.render(v, 0) for v in range(16)]
  pts, col = pointcloud.merge_views(np.stack([v[1] for v in views]), np.stack([v[0] for v in views]),
                                    scene.intrinsics, scene.extrinsics, ray_depth=True)
  pts16, col_u8 = pts.astype(np.float16), col.astype(np.uint8)
  k = cameras.render_intrinsics(cameras.normalize_intrinsics(scene.intrinsics[0], 36, 24), 42, 28, 1.5)
  c2w = cameras.extrinsics_from_spherical([70.0, 25.0, 14.0])
  kw = {}
  if case == 'pardom_far':  # max depth ≥ 64: √z, clamp 32, strength 256
    pts16 = (pts16.astype(np.float32) * 8.0).astype(np.float16)
    c2w = cameras.extrinsics_from_spherical([70.0, 25.0, 110.0])
  elif case == 'holes_and_radius2':  # a sparse cloud: many black pixels to fill; wider splats
    keep = np.random.default_rng(0).uniform(size=len(pts16)) < 0.05
    pts16, col_u8 = pts16[keep], col_u8[keep]
    kw = {'spread_radius': 2}
  pts32, col01 = pts16.astype(np.float32), col_u8.astype(np.float32) / 255.0
  a, ma = render.render_point_cloud(pts32, col01, k, c2w, 28, 42, **kw)
  b, mb = render_host.render_point_cloud_host(pts16, col_u8, k, c2w, 28, 42, **kw)
  np.testing.assert_array_equal(np.asarray(ma), mb)
  assert np.asarray(mb).mean() > (0.3 if case == 'holes_and_radius2' else 0.9)
  if case == 'holes_and_radius2':
    assert (b.sum(-1) == 0).sum() > 50  # the hole fill has work to do
  # float32 depth rounding × the 1024/z_max log-weight slope: ≲ 1e-5 (see the float64 reference test).
  np.testing.assert_allclose(b, np.asarray(a), atol=1e-5)
  for blur_kernel in (21, 3):
    va = render.render_view(pts32, col01, k, c2w, render_height=28, render_width=42, out_height=16, out_width=24,
                            blur_kernel=blur_kernel, **kw)
    vb = render_host.render_view_host(pts16, col_u8, k, c2w, render_height=28, render_width=42, out_height=16,
                                      out_width=24, blur_kernel=blur_kernel, **kw)
    assert vb.shape == (16, 24, 3) and vb.dtype == np.float32
    np.testing.assert_allclose(vb, np.asarray(va), atol=1e-5)


def test_host_unprojection_equals_geometry():
  """`render_host.unproject_planar` (pipeline's RGB-D path) = `pointcloud.unproject_depth` per view."""
  scene = procedural.generate_scene(2, procedural.scene_config('test', height=24, width=36))
  depth = np.stack([pointcloud.correct_depth_ball_plane(scene.render(v, 0)[1], scene.intrinsics[v])
                    for v in range(3)]).astype(np.float16)
  got = render_host.unproject_planar(depth, scene.intrinsics[:3], scene.extrinsics[:3])
  want = np.concatenate([pointcloud.unproject_depth(depth[v], scene.intrinsics[v], scene.extrinsics[v])
                         for v in range(3)])
  np.testing.assert_allclose(got.T, want, atol=2e-5 * np.abs(want).max())
