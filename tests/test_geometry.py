"""Cameras, trajectories, pose sampling and unprojection against hand-computed cases (docs/reference.md §1.3,
§1.4, §4.4–4.7, §4.9, Appendix C)."""

import math

import numpy as np
import pytest

from gcd_jax.geometry import cameras, pointcloud, trajectory


# ------------------------------------------------------------------------------------------------ cameras

def test_view4_extrinsics_example():
  """§4.9: Kubric view 4 = (az 15°, el 5°, r 15) → R and t of the spec."""
  sph = cameras.kubric_view_spherical()[4]
  np.testing.assert_allclose(sph, [15.0, 5.0, 15.0])
  c2w = cameras.extrinsics_from_spherical(sph)
  r_expected = [[-0.25882, 0.08419, -0.96225], [0.96593, 0.02256, -0.25783], [0.0, -0.99619, -0.08716]]
  np.testing.assert_allclose(c2w[:3, :3], r_expected, atol=1e-5)
  np.testing.assert_allclose(c2w[:3, 3], [14.434, 3.868, 2.307], atol=1e-3)
  np.testing.assert_allclose(c2w[3], [0, 0, 0, 1])


def test_spherical_convention_hand_values():
  np.testing.assert_allclose(cameras.cartesian_from_spherical(0, 0, 1), [1, 0, 0], atol=1e-15)
  np.testing.assert_allclose(cameras.cartesian_from_spherical(90, 0, 2), [0, 2, 0], atol=1e-15)
  np.testing.assert_allclose(cameras.cartesian_from_spherical(0, 90, 3), [0, 0, 3], atol=1e-15)  # latitude
  np.testing.assert_allclose(cameras.cartesian_from_spherical(180, 30, 2), [-math.sqrt(3), 0, 1], atol=1e-12)
  np.testing.assert_allclose(cameras.camera_position_from_spherical(0, 0, 1), [1, 0, 1], atol=1e-15)
  s = np.array([[15.0, 5.0, 15.0], [-120.0, 45.0, 12.0]])
  back = cameras.spherical_from_cartesian(cameras.cartesian_from_spherical(s[:, 0], s[:, 1], s[:, 2]))
  np.testing.assert_allclose(back, s, atol=1e-12)
  lay = cameras.kubric_view_spherical()
  np.testing.assert_allclose(lay[:4, 0], [0, 90, 180, 270])
  np.testing.assert_allclose(lay[4:, 0], 15 + 30 * np.arange(12))
  np.testing.assert_allclose(lay[:, 1], [45] * 4 + [5] * 12)


def test_look_at_frame_properties():
  rng = np.random.default_rng(0)
  pos = rng.uniform(-10, 10, (50, 3))
  look = rng.uniform(-2, 2, (50, 3))
  c2w = cameras.extrinsics_from_look_at(pos, look)
  r = c2w[:, :3, :3]
  np.testing.assert_allclose(r.transpose(0, 2, 1) @ r, np.broadcast_to(np.eye(3), r.shape), atol=1e-12)
  np.testing.assert_allclose(np.linalg.det(r), 1.0, atol=1e-12)  # right-handed (right, down, forward)
  fwd = (look - pos) / np.linalg.norm(look - pos, axis=-1, keepdims=True)
  np.testing.assert_allclose(r[:, :, 2], fwd, atol=1e-12)
  np.testing.assert_allclose(r[:, 2, 0], 0.0, atol=1e-12)     # right axis is horizontal
  assert np.all(r[:, 2, 1] < 0)                                 # "down" points down (world −z)
  # The look-at point projects to the principal point.
  xc = cameras.world_to_camera(look[0], c2w[0])
  np.testing.assert_allclose(xc[:2], 0.0, atol=1e-12)
  np.testing.assert_allclose(cameras.camera_to_world(xc, c2w[0]), look[0], atol=1e-12)
  with pytest.raises(ValueError, match='straight up/down'):
    cameras.extrinsics_from_look_at([0, 0, 10], [0, 0, 0])


def test_intrinsics_kubric_and_render_aspect_rule():
  k_norm = [[1.0, 0.0, -0.5], [0.0, -1.5, -0.5], [0.0, 0.0, -1.0]]  # Kubric-4D (§4.2)
  k = cameras.kubric_intrinsics(k_norm, 576, 384)
  np.testing.assert_allclose(k, cameras.intrinsics_matrix(576, 576, 288, 192))
  np.testing.assert_allclose(cameras.kubric_normalized_intrinsics(576, 576, 576, 384), k_norm)
  # §4.8 step 1: 420×280 render, Kubric aspect 1.5 → no change: fx = fy = 420.
  np.testing.assert_allclose(cameras.render_intrinsics(k_norm, 420, 280, 576 / 384),
                             cameras.intrinsics_matrix(420, 420, 210, 140))
  # PD 640×480 (aspect 4/3) intrinsics normalised; 420×280 is wider → fy := fx.
  k_pd = cameras.normalize_intrinsics(cameras.intrinsics_matrix(500, 500, 320, 240), 640, 480)
  kr = cameras.render_intrinsics(k_pd, 420, 280, 640 / 480)
  np.testing.assert_allclose(kr, cameras.intrinsics_matrix(500 / 640 * 420, 500 / 640 * 420, 210, 140))
  # Narrower render → fx := fy.
  kr = cameras.render_intrinsics(k_pd, 300, 280, 640 / 480)
  np.testing.assert_allclose(kr[0, 0], 500 / 480 * 280)


def test_blender_opencv_conversion():
  # Identity Blender camera looks down −z with y up → GCD columns (right, down, forward) = (x, −y, −z).
  c2w = cameras.blender_to_opencv_extrinsics([1.0, 2.0, 3.0], [1.0, 0.0, 0.0, 0.0])
  np.testing.assert_allclose(c2w[:3, :3], np.diag([1.0, -1.0, -1.0]))
  np.testing.assert_allclose(c2w[:3, 3], [1, 2, 3])
  # Round trip through (position, quaternion) for the 16 Kubric cameras.
  extr = cameras.extrinsics_from_spherical(cameras.kubric_view_spherical())
  pos, quat = cameras.opencv_to_blender_pose(extr)
  np.testing.assert_allclose(np.linalg.norm(quat, axis=-1), 1.0, atol=1e-12)
  np.testing.assert_allclose(cameras.blender_to_opencv_extrinsics(pos, quat), extr, atol=1e-12)
  rng = np.random.default_rng(1)
  q = rng.normal(size=(20, 4))
  q /= np.linalg.norm(q, axis=-1, keepdims=True)
  q *= np.sign(q[:, :1])
  np.testing.assert_allclose(cameras.matrix_to_quaternion(cameras.quaternion_to_matrix(q)), q, atol=1e-12)


def test_relative_pose():
  src = cameras.extrinsics_from_spherical([15.0, 5.0, 15.0])
  np.testing.assert_allclose(cameras.relative_pose(src, src), np.eye(4)[:3], atol=1e-12)
  dst = src.copy()
  dst[:3, 3] += src[:3, :3] @ np.array([1.0, 2.0, 3.0])  # move 1 right, 2 down, 3 forward
  np.testing.assert_allclose(cameras.relative_pose(src, dst), np.c_[np.eye(3), [1, 2, 3]], atol=1e-12)


# ------------------------------------------------------------------------------------------------ trajectory

def test_trajectory_example_and_motion_bucket():
  """§4.7 example: gradual, start (15°, 5°, 15), end (45°, 20°, 16)."""
  src, dst = trajectory.construct_trajectory([15, 5, 15], [45, 20, 16], 14, 13, 'interpol_linear')
  ang = trajectory.relative_angles(src, dst)
  assert ang.shape == (14, 3) and ang.dtype == np.float32
  np.testing.assert_allclose(ang[13], [0.5236, 0.2618, 1.0], atol=1e-4)
  np.testing.assert_allclose(ang[1], [0.0403, 0.0201, 0.0769], atol=1e-4)
  np.testing.assert_allclose(ang[0], 0.0, atol=0)
  np.testing.assert_allclose(src, np.tile([15, 5, 15], (14, 1)))
  assert trajectory.motion_bucket_id([15, 5, 15], [45, 20, 16], (-90, 90), (-30, 30)) == 90
  # max180: round(255·√(30²+15²)/√(180²+60²)) = round(45.07) = 45.
  assert trajectory.motion_bucket_id([15, 5, 15], [45, 20, 16], (-180, 180), (-60, 60)) == 45
  # direct: every frame at the end pose.
  _, dst = trajectory.construct_trajectory([15, 5, 15], [45, 20, 16], 14, 0)
  np.testing.assert_allclose(dst, np.tile([45, 20, 16], (14, 1)))


def test_appendix_c_weights():
  lin = [0, .077, .154, .231, .308, .385, .462, .538, .615, .692, .769, .846, .923, 1]
  sine = [0, .015, .057, .126, .216, .323, .440, .560, .677, .784, .874, .943, .985, 1]
  np.testing.assert_allclose(trajectory.trajectory_alpha(14, 13, 'interpol_linear'), lin, atol=5e-4)
  np.testing.assert_allclose(trajectory.trajectory_alpha(14, 13, 'interpol_sine'), sine, atol=6e-4)
  with pytest.raises(ValueError, match='unknown trajectory'):
    trajectory.trajectory_alpha(14, 13, 'spline')


@pytest.mark.parametrize('preset', ['kubric_gradual_max90', 'kubric_direct_max180'])
def test_kubric_pose_sampling_rules(preset):
  cfg = trajectory.trajectory_config(preset)
  big = 'max180' in preset
  assert cfg.move_time == -1 and trajectory.resolve_move_time(cfg) == (0 if 'direct' in preset else 13)
  rng = np.random.default_rng(123)
  n = 1500
  samples = [trajectory.sample_kubric_clip_and_trajectory(rng, cfg) for _ in range(n)]
  skip = np.array([s['frame_skip'] for s in samples])
  start = np.array([s['frame_start'] for s in samples])
  assert set(skip) == {1, 2, 3, 4} and start.min() == 0 and start.max() == 6
  for s in samples:
    cf = s['clip_frames']
    fwd = cf[::-1] if s['reverse'] else cf
    np.testing.assert_array_equal(fwd, s['frame_start'] + s['frame_skip'] * np.arange(14))
    assert 0 <= cf.min() and cf.max() <= 59
    assert s['fps'] == round(24 / s['frame_skip'])
  assert abs(np.mean([s['reverse'] for s in samples]) - 0.2) < 0.035
  st = np.stack([s['spherical_start'] for s in samples])
  en = np.stack([s['spherical_end'] for s in samples])
  assert st[:, 0].min() >= 0 and st[:, 0].max() < 360
  assert st[:, 1].min() >= 0 and st[:, 1].max() <= 50
  # sin-uniform elevation: sin(el) ~ U(0, sin 50°) → mean sin 50°/2, and fewer high elevations than
  # uniform-in-degrees would give.
  assert abs(np.sin(np.radians(st[:, 1])).mean() - math.sin(math.radians(50)) / 2) < 0.015
  assert st[:, 2].min() >= 12 and st[:, 2].max() <= 18
  daz, delv = (180, 60) if big else (90, 30)
  d_az = en[:, 0] - st[:, 0]
  assert d_az.min() >= -daz and d_az.max() <= daz and d_az.max() > 0.9 * daz  # azimuth end unclamped
  assert np.all(en[:, 1] >= np.maximum(st[:, 1] - delv, 0) - 1e-9)
  assert np.all(en[:, 1] <= np.minimum(st[:, 1] + delv, 50) + 1e-9)
  assert np.all(en[:, 2] >= np.maximum(st[:, 2] - 3, 12) - 1e-9)
  assert np.all(en[:, 2] <= np.minimum(st[:, 2] + 3, 18) + 1e-9)
  denom = math.hypot(daz, delv)
  for s in samples[:50]:
    motion = np.linalg.norm(s['spherical_end'][:2] - s['spherical_start'][:2])
    assert s['motion_bucket_id'] == int(round(255 * motion / denom))
    ang = s['scaled_relative_angles']
    np.testing.assert_allclose(ang[-1], (s['spherical_end'] - s['spherical_start']) * [np.pi / 180, np.pi / 180, 1],
                               rtol=1e-6, atol=1e-6)
    if 'gradual' in preset:
      np.testing.assert_allclose(ang[0], 0)
      np.testing.assert_allclose(s['scaled_relative_pose'][0], np.eye(4)[:3], atol=1e-6)
    np.testing.assert_allclose(s['src_c2w'][:, :3, 3],
                               np.broadcast_to(cameras.camera_position_from_spherical(*s['spherical_start']),
                                               (14, 3)), atol=1e-9)
    np.testing.assert_allclose(s['dst_c2w'][-1], cameras.extrinsics_from_spherical(s['spherical_end']), atol=1e-9)
    np.testing.assert_allclose(
        s['scaled_relative_pose'], cameras.relative_pose(s['src_c2w'], s['dst_c2w']), atol=1e-5)


def test_sampling_is_deterministic_and_overridable():
  cfg = trajectory.trajectory_config('max90,num_frames=4,total_frames=12')
  assert cfg.num_frames == 4 and cfg.total_frames == 12 and cfg.dataset == 'kubric'
  a = trajectory.sample_kubric_clip_and_trajectory(np.random.default_rng(7), cfg)
  b = trajectory.sample_kubric_clip_and_trajectory(np.random.default_rng(7), cfg)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])
  assert a['frame_skip'] in (1, 2, 3) and a['clip_frames'].max() <= 11
  c = trajectory.sample_kubric_clip_and_trajectory(np.random.default_rng(7), cfg, spherical_start=[15, 5, 15],
                                                   spherical_end=[45, 20, 16])
  assert c['motion_bucket_id'] == 90
  with pytest.raises(ValueError, match='unknown trajectory preset'):
    trajectory.trajectory_config('kubric_max45')
  with pytest.raises(KeyError, match='nonsense'):
    trajectory.trajectory_config('kubric,nonsense=1')


def test_pardom_ego_forward_to_topdown():
  cfg = trajectory.trajectory_config('pardom_gradual')
  assert cfg.trajectory == 'interpol_sine' and cfg.reverse_prob == 0 and cfg.fps == 10
  rng = np.random.default_rng(0)
  samples = [trajectory.sample_pardom_clip_and_trajectory(rng, cfg) for _ in range(300)]
  assert {s['frame_skip'] for s in samples} == {1, 2}
  for s in samples:
    assert not s['reverse'] and s['clip_frames'][-1] <= 49 - 1 and s['fps'] == round(10 / s['frame_skip'])
    assert s['frame_start'] <= 50 - (s['frame_skip'] * 13 + 1) - 1
    assert s['motion_bucket_id'] == 127
  s = samples[0]
  ego = cameras.extrinsics_from_look_at([1.6, 0, 1.55], [6.6, 0, 1.55])
  top = cameras.extrinsics_from_look_at([-8, 0, 8], [5.6, 0, 1.55])
  np.testing.assert_allclose(s['src_c2w'], np.broadcast_to(ego, (14, 4, 4)), atol=1e-12)
  np.testing.assert_allclose(s['dst_c2w'][0], ego, atol=1e-12)     # frame 0 = ego-forward view
  np.testing.assert_allclose(s['dst_c2w'][13], top, atol=1e-12)
  a = (1 - math.cos(math.pi * 5 / 13)) / 2
  np.testing.assert_allclose(s['dst_position'][5], (1 - a) * np.array([1.6, 0, 1.55]) + a * np.array([-8, 0, 8]))
  np.testing.assert_allclose(s['dst_look_at'][5], (1 - a) * np.array([6.6, 0, 1.55]) + a * np.array([5.6, 0, 1.55]))
  np.testing.assert_allclose(s['scaled_relative_angles'], 0)
  # ego frame: +x forward → camera forward axis = +x, right axis = −y (x forward, y left, z up).
  np.testing.assert_allclose(ego[:3, 2], [1, 0, 0], atol=1e-12)
  np.testing.assert_allclose(ego[:3, 0], [0, -1, 0], atol=1e-12)


# ------------------------------------------------------------------------------------------------ unprojection

def test_unproject_plane_and_pixel_convention():
  k = cameras.intrinsics_matrix(50.0, 40.0, 16.0, 12.0)
  c2w = cameras.extrinsics_from_look_at([3.0, -2.0, 4.0], [0.0, 0.0, 1.0])
  depth = np.full((24, 32), 5.0, np.float32)
  xyz = pointcloud.unproject_depth(depth, k, c2w)
  assert xyz.shape == (24 * 32, 3)
  xc = cameras.world_to_camera(xyz, c2w)
  np.testing.assert_allclose(xc[:, 2], 5.0, atol=1e-12)
  uv = (xc @ k.T)[:, :2] / xc[:, 2:3]
  u, v = np.meshgrid(np.arange(32), np.arange(24), indexing='xy')   # row-major, integer pixel coords
  np.testing.assert_allclose(uv, np.stack([u.ravel(), v.ravel()], -1), atol=1e-9)
  np.testing.assert_allclose(xc[16 + 12 * 32], [0, 0, 5], atol=1e-12)  # principal point → optical axis


def test_ray_to_plane_correction_reference_approximation():
  """§4.4 / §6 item 10: linspace angles over the FOV, not exact per-pixel angles."""
  w, h = 96, 64
  k = cameras.intrinsics_matrix(96.0, 96.0, 48.0, 32.0)
  ray = np.full((h, w), 10.0)
  approx = pointcloud.correct_depth_ball_plane(ray, k)
  exact = pointcloud.ray_to_planar_depth(ray, k)
  # Corner (0, 0): linspace starts at −fov/2 = −atan(W/2fx) which is the exact angle of u = 0.
  corner = 10.0 / math.sqrt((w / (2 * 96.0)) ** 2 + (h / (2 * 96.0)) ** 2 + 1)
  np.testing.assert_allclose([approx[0, 0], exact[0, 0]], corner, rtol=1e-12)
  # Quarter of the width: linear angle ≠ atan((u − cx)/fx) → a small but real difference.
  fov = 2 * math.atan(w / (2 * 96.0))
  ang_u = -fov / 2 + fov * 24 / (w - 1)
  ang_v = -2 * math.atan(h / (2 * 96.0)) / 2 + 2 * math.atan(h / (2 * 96.0)) * 32 / (h - 1)
  np.testing.assert_allclose(approx[32, 24], 10 / math.sqrt(math.tan(ang_u) ** 2 + math.tan(ang_v) ** 2 + 1),
                             rtol=1e-12)
  assert 1e-4 < abs(approx[32, 24] - exact[32, 24]) / 10 < 1e-2
  np.testing.assert_allclose(pointcloud.planar_to_ray_depth(exact, k), ray, rtol=1e-12)
  # Unprojecting ray depth with the exact conversion puts points at exactly that distance.
  c2w = cameras.extrinsics_from_spherical([15, 5, 15])
  xyz = pointcloud.unproject_depth(ray, k, c2w, ray_depth=True, ray_correction='exact')
  np.testing.assert_allclose(np.linalg.norm(xyz - c2w[:3, 3], axis=-1), 10.0, rtol=1e-12)


def test_merge_views_order():
  k = cameras.intrinsics_matrix(8.0, 8.0, 4.0, 3.0)
  extr = cameras.extrinsics_from_spherical(cameras.kubric_view_spherical()[:3])
  depth = np.stack([np.full((6, 8), d) for d in (4.0, 5.0, 6.0)])
  feats = np.arange(3 * 6 * 8 * 2).reshape(3, 6, 8, 2)
  xyz, f = pointcloud.merge_views(depth, feats, [k] * 3, extr)
  assert xyz.shape == (144, 3) and xyz.dtype == np.float32 and f.shape == (144, 2)
  np.testing.assert_array_equal(f[48 + 9], feats[1, 1, 1])  # view-major, then row-major pixels
  np.testing.assert_allclose(cameras.world_to_camera(xyz[48 + 9], extr[1]), [-3 * 5 / 8, -2 * 5 / 8, 5], atol=1e-5)
  with pytest.raises(ValueError, match='must agree'):
    pointcloud.merge_views(depth, feats[:2], [k] * 3, extr)
