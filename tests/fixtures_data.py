"""Small on-disk fixtures in the real Kubric-4D / ParallelDomain-4D layouts, and a session-built TFDS dataset.

The analytic scene is a checkered floor (z = 0) plus a red sphere rising over time, ray-cast exactly
so that tests can check unprojection against known geometry (points on the floor have z = 0).
"""

from __future__ import annotations

import json
import os

import numpy as np
from PIL import Image
import pytest

from data_pipelines import kubric4d, pardom4d
from gcd_jax.geometry import cameras

SPHERE_RADIUS = 1.5


def look_at(position, target=(0.0, 0.0, 1.0)) -> np.ndarray:
  """GCD `extrinsics_from_look_at` (§4.9): camera-to-world with (right, down, forward) columns."""
  p = np.asarray(position, np.float64)
  fwd = np.asarray(target, np.float64) - p
  fwd /= np.linalg.norm(fwd)
  right = np.cross((0.0, 0.0, -1.0), fwd)
  right /= np.linalg.norm(right)
  down = np.cross(fwd, right)
  out = np.eye(4)
  out[:3, :3] = np.stack([right, down, fwd], 1)
  out[:3, 3] = p
  return out


def kubric_view_pose(v: int, radius: float = 15.0) -> np.ndarray:
  """Kubric-4D's fixed view layout (§4.1)."""
  el, az = (45.0, 90.0 * v) if v < 4 else (5.0, (v - 4 + 0.5) * 30.0)
  el, az = np.deg2rad(el), np.deg2rad(az)
  pos = radius * np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)]) + (0, 0, 1.0)
  return look_at(pos)


def sphere_center(t: int) -> np.ndarray:
  return np.array([0.0, 0.0, 1.5 + 0.25 * t])


def raycast(k, c2w, h, w, t):
  """Ray distance [H,W], planar z [H,W], rgb uint8 [H,W,3], instance id uint8 [H,W] (0 sky, 1 floor, 2 sphere)."""
  v, u = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing='ij')
  d_cam = np.stack([(u - k[0, 2]) / k[0, 0], (v - k[1, 2]) / k[1, 1], np.ones_like(u)], -1)
  d_world = d_cam @ c2w[:3, :3].T
  norm = np.linalg.norm(d_world, axis=-1, keepdims=True)
  d = d_world / norm
  o = c2w[:3, 3]
  dist = np.full((h, w), np.inf)
  ids = np.zeros((h, w), np.uint8)
  t_floor = np.where(d[..., 2] < -1e-6, -o[2] / np.minimum(d[..., 2], -1e-6), np.inf)
  dist = np.where(t_floor < dist, t_floor, dist)
  ids[np.isfinite(t_floor)] = 1
  oc = o - sphere_center(t)
  b = (d * oc).sum(-1)
  disc = b * b - (oc @ oc - SPHERE_RADIUS ** 2)
  t_sph = np.where(disc > 0, -b - np.sqrt(np.maximum(disc, 0)), np.inf)
  t_sph = np.where(t_sph > 0, t_sph, np.inf)
  hit_sph = t_sph < dist
  dist = np.where(hit_sph, t_sph, dist)
  ids[hit_sph] = 2
  p = o + d * np.where(np.isfinite(dist), dist, 0)[..., None]
  checker = ((np.floor(p[..., 0]) + np.floor(p[..., 1])) % 2).astype(np.float64)
  rgb = np.zeros((h, w, 3))
  rgb[ids == 0] = (0.4, 0.6, 0.9)
  rgb[ids == 1] = (0.2 + 0.6 * checker[ids == 1])[:, None] * np.array([1.0, 1.0, 0.8])
  rgb[ids == 2] = (0.9, 0.1, 0.1)
  dist = np.where(np.isfinite(dist), dist, 1000.0)
  planar = dist / norm[..., 0]  # z along the optical axis = ray distance / |d_cam|
  return dist.astype(np.float32), planar.astype(np.float32), (rgb * 255).round().astype(np.uint8), ids


def _kubric_palette(n: int) -> list[int]:
  cols = [(0, 0, 0), (50, 200, 50), (200, 50, 50)] + [(i, i, i) for i in range(3, n)]
  return [c for rgb in cols[:n] for c in rgb]


def write_kubric_fixture(root: str, scene_idx: int, *, num_views=4, num_frames=6, height=24, width=36):
  """A scene in the Kubric-4D layout (§4.2) with fx = 1.0·W, fy = 1.5·H (Kubric's 32 mm lens)."""
  name = kubric4d.scene_name(scene_idx)
  sdir = os.path.join(root, name)
  os.makedirs(sdir, exist_ok=True)
  k_norm = [[1.0, 0.0, -0.5], [0.0, -1.5, -0.5], [0.0, 0.0, -1.0]]
  k = cameras.kubric_intrinsics(k_norm, width, height)
  import imageio.v3 as iio  # pylint: disable=g-import-not-at-top
  for v in range(num_views):
    c2w = kubric_view_pose(v)
    pos, quat = cameras.opencv_to_blender_pose(c2w)
    meta = {'scene': {'num_frames': num_frames, 'resolution': [width, height], 'frame_rate': 24},
            'camera': {'K': k_norm, 'positions': [pos.tolist()] * num_frames,
                       'quaternions': [quat.tolist()] * num_frames, 'focal_length': 32, 'sensor_width': 32},
            'instances': [], 'random_seed': scene_idx}
    with open(os.path.join(sdir, f'{name}_p0_v{v}.json'), 'w') as f:
      json.dump(meta, f)
    fdir = os.path.join(sdir, f'frames_p0_v{v}')
    os.makedirs(fdir, exist_ok=True)
    for t in range(num_frames):
      dist, _, rgb, ids = raycast(k, c2w, height, width, t)
      rgba = np.concatenate([rgb, np.full((height, width, 1), 255, np.uint8)], -1)
      Image.fromarray(rgba, 'RGBA').save(os.path.join(fdir, f'rgba_{t:05d}.png'))
      iio.imwrite(os.path.join(fdir, f'depth_{t:05d}.tiff'), dist[..., None])
      seg = Image.fromarray(ids, 'P')
      seg.putpalette(_kubric_palette(3))
      seg.save(os.path.join(fdir, f'segmentation_{t:05d}.png'))
  return sdir


PD_CAMERAS = ('camera0', 'camera1', 'camera10', 'yaw-0', 'yaw-60', 'yaw-neg-60')


def write_pardom_fixture(root: str, scene_idx: int, *, num_frames=4, height=12, width=16,
                         missing_frame: int | None = None):
  """A scene in the ParallelDomain-4D layout (§4.3): a few cameras, planar depth, semantic ids in R."""
  name = pardom4d.scene_name(scene_idx)
  sdir = os.path.join(root, name)
  names, intr, extr = [], [], []
  poses = {}
  for i, cam in enumerate(PD_CAMERAS):
    az = np.deg2rad(40.0 * i)
    poses[cam] = look_at((10 * np.cos(az), 10 * np.sin(az), 4.0))
  for i, cam in enumerate(PD_CAMERAS + ('velodyne',)):
    c2w = poses.get(cam, np.eye(4))
    q = cameras.matrix_to_quaternion(c2w[:3, :3])
    t = c2w[:3, 3]
    names.append(cam)
    intr.append({'fx': float(width), 'fy': float(width), 'cx': width / 2, 'cy': height / 2})
    if i % 2:  # both spellings of extrinsics occur in PD calibration files
      extr.append({'rotation': dict(zip(('qw', 'qx', 'qy', 'qz'), q.tolist())),
                   'translation': dict(zip('xyz', t.tolist()))})
    else:
      extr.append({'orientation': dict(zip('wxyz', q.tolist())), 'position': dict(zip('xyz', t.tolist()))})
  os.makedirs(os.path.join(sdir, 'calibration'), exist_ok=True)
  with open(os.path.join(sdir, 'calibration', f'{pardom4d.frame_file_stem(0)}.json'), 'w') as f:
    json.dump({'names': names, 'intrinsics': intr, 'extrinsics': extr}, f)
  os.makedirs(os.path.join(sdir, 'ontology'), exist_ok=True)
  with open(os.path.join(sdir, 'ontology', 'fdc593e7de5d680e0e82af9ca090e98a63d13a7e.json'), 'w') as f:
    json.dump({'items': [{'id': 0, 'color': {'r': 10, 'g': 20, 'b': 30}},
                         {'id': 1, 'color': {'r': 128, 'g': 64, 'b': 128}},
                         {'id': 2, 'color': {'r': 220, 'g': 20, 'b': 60}}]}, f)
  for cam in PD_CAMERAS:
    k = np.array([[width, 0, width / 2], [0, width, height / 2], [0, 0, 1.0]])
    for t in range(num_frames):
      if t == missing_frame and cam == 'camera10':
        continue
      _, planar, rgb, ids = raycast(k, poses[cam], height, width, t)
      stem = pardom4d.frame_file_stem(t)
      for mod in ('rgb', 'depth', 'semantic_segmentation_2d'):
        os.makedirs(os.path.join(sdir, mod, cam), exist_ok=True)
      rgba = np.concatenate([rgb, np.full((height, width, 1), 255, np.uint8)], -1)
      Image.fromarray(rgba, 'RGBA').save(os.path.join(sdir, 'rgb', cam, f'{stem}.png'))
      np.savez_compressed(os.path.join(sdir, 'depth', cam, f'{stem}.npz'), data=planar[..., None])
      sem = np.stack([ids, np.zeros_like(ids), np.zeros_like(ids)], -1)
      Image.fromarray(sem, 'RGB').save(os.path.join(sdir, 'semantic_segmentation_2d', cam, f'{stem}.png'))
  return sdir


@pytest.fixture(scope='session')
def kubric_root(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('kubric4d'))
  for i in range(3):
    write_kubric_fixture(root, i)
  return root


@pytest.fixture(scope='session')
def pardom_root(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('pardom4d'))
  write_pardom_fixture(root, 0)
  write_pardom_fixture(root, 7, missing_frame=2)
  return root
