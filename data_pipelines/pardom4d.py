"""Reader for the ParallelDomain-4D on-disk layout (docs/reference.md §4.3).

`<root>/scene_XXXXXX/`:
  <modality>/<camera>/<t*10+5:018d>.<ext>   rgb (.png RGBA), depth (.npz key 'data', planar metres),
                                            semantic_segmentation_2d (.png, class id = R channel, 255 = Void)
  calibration/*.json                        names, intrinsics (fx, fy, cx, cy in pixels), extrinsics
                                            (rotation{qw..}/translation{x,y,z} or orientation{w..}/position{x,y,z})
  ontology/*.json                           items[] {id, color{r,g,b}} → semantic palette

Views are in lexicographic order of camera names (camera0, camera1, camera10..15, camera2..9, yaw-0 (16),
yaw-60 (17), yaw-neg-60 (18)): this order indexes the merged point cloud's views (§4.3/§4.4).
Extrinsics are camera-to-world in the ego-vehicle frame; PD's calibration already uses the OpenCV camera
axes (right, down, forward) that GCD's renderer expects (pardom_arbit.py uses them unchanged).
"""

from __future__ import annotations

import functools
import glob
import json
import os
import re

import numpy as np
from PIL import Image

from gcd_jax.geometry.cameras import quaternion_to_matrix

NUM_FRAMES = 50
FPS = 10
RESOLUTION = (640, 480)  # (W, H); hardcoded in the reference (§6.13)
EGO_VIEW = 'yaw-0'

_SCENE_RE = re.compile(r'^scene_(\d{6})$')


def scene_name(scene_idx: int) -> str:
  return f'scene_{int(scene_idx):06d}'


def frame_file_stem(frame: int) -> str:
  """Frame t → file stem `f'{t*10+5:018d}'` (§4.3)."""
  return f'{frame * 10 + 5:018d}'


def list_scenes(root: str) -> list[str]:
  if not os.path.isdir(root):
    raise FileNotFoundError(f'ParallelDomain-4D root {root!r} does not exist; pass the folder holding scene_XXXXXX/.')
  return sorted(d for d in os.listdir(root) if _SCENE_RE.match(d) and os.path.isdir(os.path.join(root, d)))


def _pose_from_extrinsic(ext: dict) -> np.ndarray:
  """One calibration extrinsics entry (either spelling) → camera-to-world 4x4 float64."""
  if 'rotation' in ext:
    r, t = ext['rotation'], ext['translation']
    q = (r['qw'], r['qx'], r['qy'], r['qz'])
  elif 'orientation' in ext:
    r, t = ext['orientation'], ext['position']
    q = (r['w'], r['x'], r['y'], r['z'])
  else:
    raise ValueError(f'calibration extrinsics entry has neither rotation/translation nor orientation/position: '
                     f'keys {sorted(ext)}')
  out = np.eye(4)
  out[:3, :3] = quaternion_to_matrix(q)
  out[:3, 3] = (t['x'], t['y'], t['z'])
  return out


def load_ontology_palette(path: str) -> np.ndarray:
  """Ontology JSON → palette [256, 3] uint8 (class id → colour; unlisted ids black)."""
  with open(path) as f:
    onto = json.load(f)
  palette = np.zeros((256, 3), np.uint8)
  for item in onto['items']:
    c = item['color']
    palette[int(item['id'])] = (c['r'], c['g'], c['b'])
  return palette


def find_palette(root: str, scene: str | None = None) -> np.ndarray | None:
  """The semantic palette [256, 3] uint8 of a PD-4D copy: scene_000000's ontology (the reference reads
  only that one, for every scene), else `scene`'s, else the first scene's that has one; None if no scene
  has an ontology."""
  candidates = ['scene_000000'] + ([scene] if scene else []) + (list_scenes(root) if os.path.isdir(root) else [])
  for name in candidates:
    files = sorted(glob.glob(os.path.join(root, name, 'ontology', '*.json')))
    if files:
      return load_ontology_palette(files[0])
  return None


class PardomScene:
  """One ParallelDomain-4D scene folder."""

  def __init__(self, root: str, scene: int | str):
    self.name = scene_name(scene) if isinstance(scene, (int, np.integer)) else str(scene)
    m = _SCENE_RE.match(self.name)
    if not m:
      raise ValueError(f'ParallelDomain scene names look like scene_000042; got {self.name!r}')
    self.scene_idx = int(m.group(1))
    self.root = root
    self.path = os.path.join(root, self.name)
    if not os.path.isdir(self.path):
      raise FileNotFoundError(f'ParallelDomain-4D scene folder {self.path!r} is missing; check --data-dir / manual_dir.')
    self.view_names, self._intrinsics, self._extrinsics = self._load_calibration()
    self.num_views = len(self.view_names)
    self.width, self.height = RESOLUTION
    self.num_frames = self._count_frames()

  def _load_calibration(self):
    files = sorted(glob.glob(os.path.join(self.path, 'calibration', '*.json')))
    if not files:
      raise FileNotFoundError(
          f'ParallelDomain scene {self.name}: no calibration JSON in {os.path.join(self.path, "calibration")!r}; '
          'the scene is incomplete — re-download it or drop it from the split JSON.')
    with open(files[0]) as f:  # constant over time (§4.3): the first file is representative.
      calib = json.load(f)
    for key in ('names', 'intrinsics', 'extrinsics'):
      if key not in calib:
        raise ValueError(f'{files[0]}: key {key!r} missing (expected names/intrinsics/extrinsics)')
    entries = {}
    for name, intr, ext in zip(calib['names'], calib['intrinsics'], calib['extrinsics']):
      if 'velodyne' in name:
        continue
      k = np.array([[intr['fx'], 0.0, intr['cx']], [0.0, intr['fy'], intr['cy']], [0.0, 0.0, 1.0]])
      entries[name] = (k, _pose_from_extrinsic(ext))
    names = sorted(entries)  # lexicographic, as the reference's point-cloud view index (§4.3)
    return names, np.stack([entries[n][0] for n in names]), np.stack([entries[n][1] for n in names])

  def _count_frames(self) -> int:
    folder = os.path.join(self.path, 'rgb', EGO_VIEW if EGO_VIEW in self.view_names else self.view_names[0])
    if not os.path.isdir(folder):
      raise FileNotFoundError(f'ParallelDomain scene {self.name}: rgb folder {folder!r} is missing.')
    stems = [int(os.path.splitext(f)[0]) for f in os.listdir(folder) if f.endswith('.png')]
    return (max(stems) - 5) // 10 + 1 if stems else 0

  def view_index(self, view: int | str) -> int:
    if isinstance(view, str):
      if view not in self.view_names:
        raise KeyError(f'{self.name}: camera {view!r} not in calibration ({self.view_names})')
      return self.view_names.index(view)
    if not 0 <= view < self.num_views:
      raise IndexError(f'view {view} out of range for {self.name} ({self.num_views} views)')
    return int(view)

  def intrinsics(self, view: int | str) -> np.ndarray:
    """Pixel intrinsics [3, 3] float64 (for the 640x480 images)."""
    return self._intrinsics[self.view_index(view)]

  def extrinsics(self, view: int | str) -> np.ndarray:
    """Camera-to-world [4, 4] float64 (ego frame, constant over time)."""
    return self._extrinsics[self.view_index(view)]

  def cameras(self) -> tuple[np.ndarray, np.ndarray]:
    """(intrinsics [V, 3, 3], extrinsics [V, T, 4, 4]) float64 — extrinsics repeated over frames."""
    return self._intrinsics.copy(), np.repeat(self._extrinsics[:, None], self.num_frames, axis=1)

  def _file(self, modality: str, view, frame: int, ext: str) -> str:
    cam = self.view_names[self.view_index(view)]
    path = os.path.join(self.path, modality, cam, f'{frame_file_stem(frame)}.{ext}')
    if not os.path.exists(path):
      raise FileNotFoundError(
          f'ParallelDomain scene {self.name}: {modality} for camera {cam} frame {frame} ({path!r}) is missing; '
          'some PD scenes miss frames — such frames are skipped when building point clouds '
          '(`frame_complete`), or pick another frame range.')
    return path

  def frame_complete(self, frame: int) -> bool:
    """True when rgb/depth/semantic files exist for every view (the reference skips incomplete frames, §4.4)."""
    for cam in self.view_names:
      stem = frame_file_stem(frame)
      for mod, ext in (('rgb', 'png'), ('depth', 'npz'), ('semantic_segmentation_2d', 'png')):
        if not os.path.exists(os.path.join(self.path, mod, cam, f'{stem}.{ext}')):
          return False
    return True

  def rgb(self, view, frame: int) -> np.ndarray:
    """[H, W, 3] uint8."""
    with Image.open(self._file('rgb', view, frame, 'png')) as im:
      return np.asarray(im.convert('RGB'), np.uint8)

  def depth(self, view, frame: int) -> np.ndarray:
    """[H, W] float32 planar depth (metres; used directly as camera z, §4.3)."""
    with np.load(self._file('depth', view, frame, 'npz')) as z:
      d = np.asarray(z['data'], np.float32)
    return d[..., 0] if d.ndim == 3 else d

  def semantic(self, view, frame: int) -> np.ndarray:
    """[H, W] uint8 class ids (R channel; 255 = Void)."""
    with Image.open(self._file('semantic_segmentation_2d', view, frame, 'png')) as im:
      arr = np.asarray(im)
    return (arr[..., 0] if arr.ndim == 3 else arr).astype(np.uint8)

  @functools.cached_property
  def palette(self) -> np.ndarray:
    """Semantic palette [256, 3] uint8 (`find_palette`: scene_000000's ontology, as the reference)."""
    palette = find_palette(self.root, self.name)
    if palette is None:
      raise FileNotFoundError(f'no ontology/*.json in {self.path!r} nor in any other scene of {self.root!r}; '
                              'needed for semantic colours (docs/reference.md §4.3).')
    return palette
