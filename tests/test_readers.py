"""Readers for the Kubric-4D / ParallelDomain-4D layouts, point-cloud stores and splits (docs/reference.md §4.1–4.4, §5.4)."""

import os
import shutil

import numpy as np
import pytest

from data_pipelines import kubric4d, pardom4d, pointcloud_store, splits
from gcd_jax.geometry import pointcloud
from tests.fixtures_data import (kubric_root, pardom_root, kubric_view_pose, raycast,  # noqa: F401
                                 write_kubric_fixture, write_pardom_fixture, PD_CAMERAS)


def test_kubric_cameras_match_layout(kubric_root):
  scene = kubric4d.KubricScene(kubric_root, 1)
  assert (scene.num_views, scene.num_frames, scene.width, scene.height) == (4, 6, 36, 24)
  k = scene.intrinsics(0)
  # §4.4: |K| scaled by (W, H): fx = 1.0·W, fy = 1.5·H, cx = W/2, cy = H/2.
  np.testing.assert_allclose(k, [[36, 0, 18], [0, 36, 12], [0, 0, 1]])
  ext = scene.extrinsics(2)
  assert ext.shape == (6, 4, 4)
  np.testing.assert_allclose(ext[3], kubric_view_pose(2), atol=1e-9)


def test_kubric_view4_extrinsics_example():
  # §4.9: view 4 of the Kubric layout, round-tripped through Blender quaternions (§4.4 column flip).
  from gcd_jax.geometry import cameras  # pylint: disable=g-import-not-at-top
  pos, quat = cameras.opencv_to_blender_pose(kubric_view_pose(4))
  # Written to and read back from a Kubric-layout JSON by the reader in test_kubric_cameras_match_layout.
  ext = cameras.blender_to_opencv_extrinsics(pos[None], quat[None])[0]
  np.testing.assert_allclose(ext[:3, :3], [[-0.25882, 0.08419, -0.96225], [0.96593, 0.02256, -0.25783],
                                           [0, -0.99619, -0.08716]], atol=1e-5)
  np.testing.assert_allclose(ext[:3, 3], [14.434, 3.868, 2.307], atol=1e-3)


def test_kubric_frames_and_segmentation(kubric_root):
  scene = kubric4d.KubricScene(kubric_root, 'scn00000')
  rgb = scene.rgb(3, 5)
  depth = scene.depth(3, 5)
  ids, colors = scene.segmentation(3, 5)
  assert rgb.shape == (24, 36, 3) and rgb.dtype == np.uint8
  assert depth.shape == (24, 36) and depth.dtype == np.float32
  _, _, rgb_ref, ids_ref = raycast(scene.intrinsics(3), scene.extrinsics(3)[5], 24, 36, 5)
  np.testing.assert_array_equal(rgb, rgb_ref)
  np.testing.assert_array_equal(ids, ids_ref)
  np.testing.assert_array_equal(colors[ids == 2][0], (200, 50, 50))  # palette colour of instance 2


def test_kubric_missing_files_name_the_culprit(tmp_path):
  root = str(tmp_path)
  sdir = write_kubric_fixture(root, 5, num_views=3, num_frames=2, height=6, width=9)
  os.remove(os.path.join(sdir, 'frames_p0_v1', 'depth_00001.tiff'))
  scene = kubric4d.KubricScene(root, 5)
  with pytest.raises(FileNotFoundError, match=r'view 1 frame 1 depth'):
    scene.depth(1, 1)
  os.remove(os.path.join(sdir, 'scn00005_p0_v1.json'))
  with pytest.raises(FileNotFoundError, match=r'view\(s\) \[1\] missing'):
    kubric4d.KubricScene(root, 5)
  with pytest.raises(FileNotFoundError, match='scn00009'):
    kubric4d.KubricScene(root, 9)


def test_ray_to_planar_depth_and_unprojection(kubric_root):
  scene = kubric4d.KubricScene(kubric_root, 0)
  pcl = pointcloud_store.build_frame_pointcloud(scene, 2)
  n = 24 * 36
  assert pcl['xyz'].shape == (4, n, 3) and pcl['xyz'].dtype == np.float16
  assert pcl['rgb'].dtype == np.uint8 and pcl['segm'].shape == (4, n, 3)
  ids = np.stack([scene.segmentation(v, 2)[0].reshape(-1) for v in range(4)])
  floor = pcl['xyz'][ids == 1].astype(np.float64)
  # Floor points land on z = 0; the reference's linear-angle ray→plane correction (§6.10) is approximate,
  # so allow its off-axis error (largest at this tiny 36-px width: ≤ 0.2 m at ~20 m) plus float16 rounding.
  assert np.abs(floor[:, 2]).max() < 0.25, np.abs(floor[:, 2]).max()
  assert np.abs(floor[:, 2]).mean() < 0.06, np.abs(floor[:, 2]).mean()
  # Exact planar depth gives exact points: the correction is the only approximation.
  k, c2w = scene.intrinsics(0), scene.extrinsics(0)[2]
  _, planar, _, ids0 = raycast(k, c2w, 24, 36, 2)
  pts = pointcloud.unproject_depth(planar, k, c2w)
  assert np.abs(pts[ids0.reshape(-1) == 1, 2]).max() < 1e-5  # float32 depth rounding
  dist, _, _, _ = raycast(k, c2w, 24, 36, 2)
  approx = pointcloud.correct_depth_ball_plane(dist, k)
  rel = np.abs(approx / planar - 1)
  assert rel.max() < 0.02, rel.max()  # linear-angle approximation error at 36×24: 1.7 % in the corners
  # Centre pixel: ray and plane depth agree (θ ≈ 0).
  corr = pointcloud.correct_depth_ball_plane(np.ones((24, 36), np.float32), k)
  assert corr.max() <= 1.0 and corr[12, 18] > 0.999


def test_pointcloud_store_roundtrip(kubric_root, tmp_path):
  scene = kubric4d.KubricScene(kubric_root, 2)
  out = pointcloud_store.build_scene_store(scene, str(tmp_path), frames=[0, 3])
  store = pointcloud_store.PointCloudStore(str(tmp_path))
  assert store.scenes() == ['scn00002']
  got = store.frame('scn00002', 3)
  ref = pointcloud_store.build_frame_pointcloud(scene, 3)
  for key in ref:
    np.testing.assert_array_equal(got[key], ref[key])
  cams = store.cameras('scn00002')
  assert cams['extrinsics'].shape == (4, 6, 4, 4) and list(cams['frames']) == [0, 3]
  with pytest.raises(FileNotFoundError, match='frame 1'):
    store.frame('scn00002', 1)
  assert not [d for d in os.listdir(tmp_path) if d.startswith('.')]  # no temp leftovers
  del out


def test_pointcloud_frame_direct_read(tmp_path):
  """load_frame reads uncompressed .npz members straight from the file (no zip CRC pass), into given
  arrays when their shape/dtype match; compressed files and absent keys still behave like np.load."""
  rng = np.random.default_rng(0)
  pcl = {'xyz': rng.normal(size=(2, 7, 3)).astype(np.float16), 'rgb': rng.integers(0, 255, (2, 7, 3), np.uint8),
         'segm': rng.integers(0, 255, (2, 7, 1), np.uint8)}
  for compress in (False, True):
    path = str(tmp_path / f'pcl_rgb_segm_00000_{compress}.npz')
    pointcloud_store.save_frame(path, pcl, compress=compress)
    got = pointcloud_store.load_frame(path)
    assert sorted(got) == sorted(pcl)
    for k in pcl:
      np.testing.assert_array_equal(got[k], pcl[k])
      assert got[k].dtype == pcl[k].dtype
    dest = {'xyz': np.zeros((2, 7, 3), np.float16), 'rgb': np.zeros((3, 7, 3), np.uint8)}  # rgb: wrong shape
    got = pointcloud_store.load_frame(path, keys=('xyz', 'rgb'), out=dest)
    assert sorted(got) == ['rgb', 'xyz']
    assert (got['xyz'] is dest['xyz']) == (not compress)
    assert got['rgb'] is not dest['rgb']
    np.testing.assert_array_equal(got['xyz'], pcl['xyz'])
    np.testing.assert_array_equal(got['rgb'], pcl['rgb'])
    with pytest.raises(KeyError):
      pointcloud_store.load_frame(path, keys=('tag',))


def test_reference_pt_format_is_read(tmp_path):
  torch = pytest.importorskip('torch')
  xyz = torch.randn(2, 5, 3).half()
  rgb = torch.randint(0, 255, (2, 5, 3), dtype=torch.uint8)
  segm = torch.randint(0, 255, (2, 5, 3), dtype=torch.uint8)
  torch.save([xyz, rgb, segm], tmp_path / 'pcl_rgb_segm_00004.pt')
  got = pointcloud_store.PointCloudStore(str(tmp_path.parent)).frame(tmp_path.name, 4)
  np.testing.assert_array_equal(got['xyz'], xyz.numpy())
  np.testing.assert_array_equal(got['segm'], segm.numpy())


def test_pardom_reader(pardom_root):
  scene = pardom4d.PardomScene(pardom_root, 0)
  # Lexicographic view order, velodyne skipped (§4.3).
  assert scene.view_names == sorted(PD_CAMERAS) == ['camera0', 'camera1', 'camera10', 'yaw-0', 'yaw-60', 'yaw-neg-60']
  assert scene.num_frames == 4
  k, c2w = scene.intrinsics('yaw-0'), scene.extrinsics('yaw-0')
  np.testing.assert_allclose(k, [[16, 0, 8], [0, 16, 6], [0, 0, 1]])
  from tests.fixtures_data import look_at
  np.testing.assert_allclose(c2w, look_at((10 * np.cos(np.deg2rad(120)), 10 * np.sin(np.deg2rad(120)), 4.0)),
                             atol=1e-9)  # index 3 in PD_CAMERAS → 120°; both extrinsics spellings parsed
  np.testing.assert_allclose(scene.extrinsics('camera1'), look_at((10 * np.cos(np.deg2rad(40)),
                                                                   10 * np.sin(np.deg2rad(40)), 4.0)), atol=1e-9)
  _, planar, rgb, ids = raycast(k, c2w, 12, 16, 1)
  np.testing.assert_array_equal(scene.rgb('yaw-0', 1), rgb)
  np.testing.assert_allclose(scene.depth('yaw-0', 1), planar)
  np.testing.assert_array_equal(scene.semantic(3, 1), ids)
  assert tuple(scene.palette[1]) == (128, 64, 128) and tuple(scene.palette[5]) == (0, 0, 0)
  pcl = pointcloud_store.build_frame_pointcloud(scene, 1)
  assert pcl['segm'].shape == (6, 192, 1) and list(pcl['tag'][:, 0, 0]) == [0, 1, 2, 3, 4, 5]
  floor = pcl['xyz'][pcl['segm'][..., 0] == 1].astype(np.float64)
  assert np.abs(floor[:, 2]).max() < 0.02  # planar depth: exact up to float16


def test_pardom_missing_frame(pardom_root, tmp_path):
  scene = pardom4d.PardomScene(pardom_root, 7)
  assert not scene.frame_complete(2) and scene.frame_complete(1)
  with pytest.raises(FileNotFoundError, match='camera10 frame 2'):
    scene.rgb('camera10', 2)
  out = pointcloud_store.build_scene_store(scene, str(tmp_path))
  assert sorted(os.listdir(out)) == ['cameras.npz'] + [f'pcl_rgb_segm_{t:05d}.npz' for t in (0, 1, 3)]
  shutil.rmtree(os.path.join(pardom_root, 'scene_000007', 'calibration'))
  with pytest.raises(FileNotFoundError, match='calibration'):
    pardom4d.PardomScene(pardom_root, 7)
  write_pardom_fixture(pardom_root, 7, missing_frame=2)  # restore for other tests


def test_splits(tmp_path):
  assert splits.kubric_split('train') == list(range(2800))
  assert splits.kubric_split('val')[0] == 2800 and len(splits.kubric_split('test')) == 100
  assert splits.kubric_split('test20') == list(range(2900, 2920))
  p = str(tmp_path / 'kubric_test20.txt')
  splits.write_scene_list(p, [f'scn{i:05d}' for i in splits.kubric_split('test20')], prefix='/data/kubric',
                          comment='Kubric-4D test20')
  assert splits.read_scene_list(p) == [f'scn{i:05d}' for i in range(2900, 2920)]
  js = str(tmp_path / 'pardom_datasplit.json')
  splits.write_pardom_split(js, ['scene_000001', 'scene_000002'], ['scene_000003'], ['scene_000004'])
  assert splits.load_pardom_split(js, 'train') == ['scene_000001', 'scene_000002']
  assert splits.load_pardom_split(js, 'test') == ['scene_000004']
  tr, va, te = (splits.procedural_split(s, 60) for s in ('train', 'val', 'test'))
  assert (len(tr), len(va), len(te)) == (56, 2, 2) and not set(tr) & set(va) | set(tr) & set(te)
  assert splits.procedural_split('train', 2) == [0, 1] and splits.procedural_split('val', 2) == []
  with pytest.raises(ValueError, match='unknown Kubric-4D split'):
    splits.kubric_split('training')
