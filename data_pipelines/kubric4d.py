"""Reader for the Kubric-4D on-disk layout (docs/reference.md §4.2).

`<root>/scnXXXXX/`:
  scnXXXXX_p0_v{V}.json                    Kubric metadata per view (camera K, positions, quaternions, ...)
  frames_p0_v{V}/rgba_{t:05d}.png          uint8 RGBA
  frames_p0_v{V}/depth_{t:05d}.tiff        float32 distance along the ray (not planar depth)
  frames_p0_v{V}/segmentation_{t:05d}.png  palette PNG of instance ids (0 = background / dome)

Cameras are returned in GCD's convention (§4.9): camera-to-world 4x4 with rotation columns
(right, down, forward), i.e. Blender's (x right, y up, -z forward) with columns 1 and 2 negated (§4.4);
intrinsics in pixels with pixel centres at integer coordinates (`cx = 0.5·W`).
"""

from __future__ import annotations

import functools
import json
import os
import re

import numpy as np
from PIL import Image

from gcd_jax.geometry import cameras

NUM_VIEWS = 16
NUM_FRAMES = 60
FPS = 24
RESOLUTION = (576, 384)  # (W, H), §4.1

_SCENE_RE = re.compile(r'^scn(\d{5})$')


def scene_name(scene_idx: int) -> str:
  return f'scn{int(scene_idx):05d}'


def list_scenes(root: str) -> list[str]:
  """Sorted scene folder names `scnXXXXX` under `root`."""
  if not os.path.isdir(root):
    raise FileNotFoundError(
        f'Kubric-4D root {root!r} does not exist; pass the folder that holds the scnXXXXX/ scene folders '
        '(see docs/reference.md §4.2, or build the procedural dataset with `gcd-jax data build procedural_4d`).')
  return sorted(d for d in os.listdir(root) if _SCENE_RE.match(d) and os.path.isdir(os.path.join(root, d)))


def read_depth_tiff(path: str) -> np.ndarray:
  """float32 TIFF → [H, W] float32 (Kubric writes [H, W, 1])."""
  import imageio.v3 as iio  # pylint: disable=g-import-not-at-top
  depth = np.asarray(iio.imread(path), np.float32)
  if depth.ndim == 3:
    depth = depth[..., 0]
  return depth


class KubricScene:
  """One Kubric-4D scene folder. Views 0..V-1, frames 0..T-1.

  Methods return numpy arrays; nothing is cached except the small per-view JSON metadata.
  """

  def __init__(self, root: str, scene: int | str):
    self.name = scene_name(scene) if isinstance(scene, (int, np.integer)) else str(scene)
    m = _SCENE_RE.match(self.name)
    if not m:
      raise ValueError(f'Kubric scene names look like scn00042; got {self.name!r}')
    self.scene_idx = int(m.group(1))
    self.root = root
    self.path = os.path.join(root, self.name)
    if not os.path.isdir(self.path):
      raise FileNotFoundError(
          f'Kubric-4D scene folder {self.path!r} is missing; check --data-dir / manual_dir points at the '
          'folder that contains scnXXXXX/ (docs/reference.md §4.2).')
    self.num_views = self._count_views()
    meta0 = self.metadata(0)
    self.num_frames = int(meta0['num_frames'])
    self.width, self.height = (int(v) for v in meta0['resolution'])

  def _count_views(self) -> int:
    views = []
    for f in os.listdir(self.path):
      m = re.match(rf'^{self.name}_p0_v(\d+)\.json$', f)
      if m:
        views.append(int(m.group(1)))
    if not views:
      raise FileNotFoundError(
          f'no calibration/metadata files {self.name}_p0_v*.json in {self.path!r}; the scene export is '
          'incomplete — re-export it (export_kub_mv.py) or regenerate the procedural scene.')
    views = sorted(views)
    if views != list(range(len(views))):
      missing = sorted(set(range(views[-1] + 1)) - set(views))
      raise FileNotFoundError(
          f'Kubric scene {self.name}: metadata JSON for view(s) {missing} missing '
          f'({self.name}_p0_v{missing[0]}.json); every view 0..{views[-1]} is needed to merge the point cloud '
          '— re-export the scene or remove it from the split.')
    return len(views)

  def _check_view(self, view: int):
    if not 0 <= view < self.num_views:
      raise IndexError(f'view {view} out of range for {self.name} ({self.num_views} views)')

  @functools.lru_cache(maxsize=64)
  def metadata(self, view: int) -> dict:
    """Parsed `scnXXXXX_p0_v{view}.json` with 'num_frames', 'resolution', 'K', 'positions', 'quaternions'."""
    path = os.path.join(self.path, f'{self.name}_p0_v{view}.json')
    if not os.path.exists(path):
      raise FileNotFoundError(
          f'Kubric scene {self.name}: view {view} metadata {path!r} is missing (needed for its camera '
          'intrinsics/extrinsics); re-export the scene.')
    with open(path) as f:
      raw = json.load(f)
    # Kubric's own exports put frame count/resolution under 'metadata'; GCD's exporter under 'scene'.
    scene = raw.get('scene') or raw.get('metadata')
    if scene is None or 'camera' not in raw:
      raise ValueError(f'{path}: expected keys "scene" (or "metadata") and "camera" (Kubric metadata JSON)')
    cam = raw['camera']
    for key in ('K', 'positions', 'quaternions'):
      if key not in cam:
        raise ValueError(f'{path}: camera.{key} missing (Kubric metadata JSON, docs/reference.md §4.2)')
    return {
        'num_frames': int(scene['num_frames']),
        'resolution': tuple(int(v) for v in scene['resolution']),
        'K': np.asarray(cam['K'], np.float64),
        'positions': np.asarray(cam['positions'], np.float64),
        'quaternions': np.asarray(cam['quaternions'], np.float64),
    }

  def intrinsics(self, view: int) -> np.ndarray:
    """Pixel intrinsics [3, 3] float64."""
    self._check_view(view)
    return cameras.kubric_intrinsics(self.metadata(view)['K'], self.width, self.height)

  def extrinsics(self, view: int) -> np.ndarray:
    """Camera-to-world (right, down, forward) [T, 4, 4] float64 for all frames."""
    self._check_view(view)
    m = self.metadata(view)
    if len(m['positions']) < self.num_frames or len(m['quaternions']) < self.num_frames:
      raise ValueError(f'{self.name} view {view}: camera track has {len(m["positions"])} positions, '
                       f'{self.num_frames} frames expected')
    return cameras.blender_to_opencv_extrinsics(m['positions'][:self.num_frames], m['quaternions'][:self.num_frames])

  def _frame_file(self, view: int, frame: int, kind: str, ext: str) -> str:
    self._check_view(view)
    if not 0 <= frame < self.num_frames:
      raise IndexError(f'frame {frame} out of range for {self.name} ({self.num_frames} frames)')
    path = os.path.join(self.path, f'frames_p0_v{view}', f'{kind}_{frame:05d}.{ext}')
    if not os.path.exists(path):
      raise FileNotFoundError(
          f'Kubric scene {self.name}: view {view} frame {frame} {kind} file {path!r} is missing; '
          're-export the scene (or exclude it from the split) — every view/frame is used for the merged point cloud.')
    return path

  def rgb(self, view: int, frame: int) -> np.ndarray:
    """[H, W, 3] uint8 (alpha dropped)."""
    with Image.open(self._frame_file(view, frame, 'rgba', 'png')) as im:
      return np.asarray(im.convert('RGB'), np.uint8)

  def depth(self, view: int, frame: int) -> np.ndarray:
    """[H, W] float32 distance along the ray (metres)."""
    return read_depth_tiff(self._frame_file(view, frame, 'depth', 'tiff'))

  def segmentation(self, view: int, frame: int) -> tuple[np.ndarray, np.ndarray]:
    """(instance ids [H, W] uint8, palette colours [H, W, 3] uint8) of the palette PNG."""
    with Image.open(self._frame_file(view, frame, 'segmentation', 'png')) as im:
      if im.mode == 'P':
        ids = np.asarray(im, np.uint8)
        colors = np.asarray(im.convert('RGB'), np.uint8)
      else:  # a grey-level id image (some exporters): colour = grey replicated.
        ids = np.asarray(im.convert('L'), np.uint8)
        colors = np.repeat(ids[..., None], 3, -1)
    return ids, colors

  def cameras(self) -> tuple[np.ndarray, np.ndarray]:
    """(intrinsics [V, 3, 3], extrinsics [V, T, 4, 4]) float64."""
    return (np.stack([self.intrinsics(v) for v in range(self.num_views)]),
            np.stack([self.extrinsics(v) for v in range(self.num_views)]))

