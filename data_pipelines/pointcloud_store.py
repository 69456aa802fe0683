"""Merged per-frame point clouds (docs/reference.md §4.4), built from a scene reader, stored as .npz per frame.

Layout written here (one folder per scene, one file per frame, like the reference's `pcl/` tree):
  <out>/<scene>/pcl_rgb_segm_{t:05d}.npz   xyz [V, N, 3] float16, rgb [V, N, 3] uint8,
                                           segm [V, N, 3] uint8 (Kubric: palette colours of the instance PNG)
                                                or [V, N, 1] uint8 (PD: class id), PD also tag [V, N, 1] uint8
  <out>/<scene>/cameras.npz                intrinsics [V, 3, 3], extrinsics [V, T, 4, 4] (float64), width,
                                           height, num_frames, frames (stored frame indices); PD also
                                           semantic_palette [256, 3] uint8 (class id → colour) when the
                                           copy has an ontology
N = H·W: every pixel of every view is unprojected (no filtering), as the reference does.
Reference-format `pcl_rgb_segm_*.pt` files (torch lists) are read too when torch is importable.

File names use the frame index t (`{t:05d}`) for both datasets; the reference's PD files are named
`{t*10+5:06d}` — `frame_path` accepts `reference_pd_names=True` to read those.
"""

from __future__ import annotations

import os
import struct
import zipfile

import numpy as np

from gcd_jax.geometry import pointcloud

# float16 max is 65504; the reference clamps PD depth to 30000 m before unprojection (§4.4).
MAX_DEPTH = 30000.0


def build_frame_pointcloud(scene, frame: int) -> dict[str, np.ndarray]:
  """Merge all views of one frame of a KubricScene or PardomScene into the §4.4 per-frame arrays."""
  from data_pipelines.kubric4d import KubricScene  # pylint: disable=g-import-not-at-top
  is_kubric = isinstance(scene, KubricScene)
  xyz, rgb, segm, tag = [], [], [], []
  for v in range(scene.num_views):
    k = scene.intrinsics(v)
    ext = scene.extrinsics(v)
    c2w = ext[frame] if ext.ndim == 3 else ext
    depth = scene.depth(v, frame)
    if is_kubric:  # ray distance → planar z with the reference's linspace-angle approximation (§6.10)
      depth = pointcloud.correct_depth_ball_plane(depth, k)
      _, seg_colors = scene.segmentation(v, frame)
      segm.append(seg_colors.reshape(-1, 3))
    else:
      depth = np.minimum(depth, MAX_DEPTH)
      segm.append(scene.semantic(v, frame).reshape(-1, 1))
      tag.append(np.full((depth.size, 1), v, np.uint8))
    xyz.append(pointcloud.unproject_depth(depth, k, c2w).astype(np.float16))
    rgb.append(scene.rgb(v, frame).reshape(-1, 3))
  out = {'xyz': np.stack(xyz), 'rgb': np.stack(rgb), 'segm': np.stack(segm)}
  if tag:
    out['tag'] = np.stack(tag)
  return out


def frame_path(scene_dir: str, frame: int, *, ext: str = 'npz', reference_pd_names: bool = False) -> str:
  stem = f'{frame * 10 + 5:06d}' if reference_pd_names else f'{frame:05d}'
  return os.path.join(scene_dir, f'pcl_rgb_segm_{stem}.{ext}')


def save_frame(path: str, pcl: dict[str, np.ndarray], compress: bool = False):
  """Atomic .npz write (gcd_jax/fileio.py)."""
  from gcd_jax import fileio  # pylint: disable=g-import-not-at-top
  with fileio.atomic_file(path, '.npz') as tmp:
    (np.savez_compressed if compress else np.savez)(tmp, **pcl)


def _read_npz(path: str, keys=None, out=None) -> dict[str, np.ndarray]:
  """Members of an .npz; uncompressed ones (what `save_frame` writes by default) are read straight from
  the file into their array — one copy, no zip CRC pass. With segm skipped, reading a 14-frame Kubric-size
  clip went from ~0.7–2 s (`np.load`, a third of the point-cloud path's per-example cost) to ~0.08 s. `out` maps keys to
  preallocated arrays: a member whose shape/dtype matches is read into it (e.g. one frame of a clip
  buffer), otherwise into a new array."""
  out = out or {}
  result = {}
  with zipfile.ZipFile(path) as zf, open(path, 'rb') as f:
    names = [n[:-4] for n in zf.namelist() if n.endswith('.npy')]
    for key in (names if keys is None else keys):
      info = zf.getinfo(key + '.npy')
      if info.compress_type != zipfile.ZIP_STORED:
        with zf.open(info) as member:
          arr = np.lib.format.read_array(member)
      else:
        f.seek(info.header_offset)
        local = f.read(30)  # zip local file header: the name and extra field lengths sit at bytes 26–29
        name_len, extra_len = struct.unpack('<HH', local[26:30])
        f.seek(info.header_offset + 30 + name_len + extra_len)
        version = np.lib.format.read_magic(f)
        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0) else
                       np.lib.format.read_array_header_2_0)
        shape, fortran, dtype = read_header(f)
        if fortran or dtype.hasobject:
          raise ValueError(f'{path}: member {key} is not a C-ordered plain array')
        arr = out.get(key)
        if arr is None or arr.shape != tuple(shape) or arr.dtype != dtype or not arr.flags.c_contiguous:
          arr = np.empty(shape, dtype)
        if f.readinto(memoryview(arr.reshape(-1).view(np.uint8))) != arr.nbytes:
          raise OSError(f'{path}: member {key} is truncated')
      result[key] = arr
  return result


def load_frame(path: str, keys=None, out=None) -> dict[str, np.ndarray]:
  """Read one merged frame: our .npz, or a reference `.pt` list (torch, weights_only=True). keys: the
  arrays to read (default all); out: preallocated arrays to read them into (.npz)."""
  if not os.path.exists(path):
    raise FileNotFoundError(f'point-cloud frame {path!r} missing; build the store with '
                            '`gcd-jax data build` / build_scene_store, or check the frame index.')
  if path.endswith('.npz'):
    return _read_npz(path, keys, out)
  if path.endswith('.pt'):
    try:
      import torch  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise ImportError(f'{path} is a reference torch point cloud; install torch==2.13.0 (CPU) to read it, '
                        'or convert the store to .npz') from e
    items = torch.load(path, map_location='cpu', weights_only=True)
    frame = {k: v.numpy() for k, v in zip(['xyz', 'rgb', 'segm', 'tag'], items)}
    return frame if keys is None else {k: frame[k] for k in keys}
  raise ValueError(f'unknown point-cloud file type {path!r} (expected .npz or .pt)')


def build_scene_store(scene, out_root: str, frames=None, compress: bool = False) -> str:
  """Write all (complete) frames of `scene` to `<out_root>/<scene.name>/`; atomic per scene.

  PD frames with a missing view file are skipped, as in `convert_pcl_pardom.py` (§4.4).
  Returns the scene folder path.
  """
  from gcd_jax import fileio  # pylint: disable=g-import-not-at-top
  final = os.path.join(out_root, scene.name)
  with fileio.atomic_dir(final, overwrite=True) as tmp:
    frames = range(scene.num_frames) if frames is None else frames
    kept = []
    for t in frames:
      if hasattr(scene, 'frame_complete') and not scene.frame_complete(t):
        continue
      save_frame(frame_path(tmp, t), build_frame_pointcloud(scene, t), compress=compress)
      kept.append(t)
    intr, extr = scene.cameras()
    extra = {}
    if hasattr(scene, 'frame_complete'):  # PD: the semantic target needs the ontology colours (§4.6)
      from data_pipelines.pardom4d import find_palette  # pylint: disable=g-import-not-at-top
      palette = find_palette(scene.root, scene.name)
      if palette is not None:
        extra['semantic_palette'] = palette
    np.savez(os.path.join(tmp, 'cameras.npz'), intrinsics=intr, extrinsics=extr, width=scene.width,
             height=scene.height, num_frames=scene.num_frames, frames=np.asarray(kept, np.int32), **extra)
  return final


class PointCloudStore:
  """Read side of a store written by `build_scene_store` (or a reference `pcl/` tree of .pt files)."""

  def __init__(self, root: str):
    if not os.path.isdir(root):
      raise FileNotFoundError(f'point-cloud store {root!r} does not exist; build it first (`gcd-jax data build`).')
    self.root = root

  def scenes(self) -> list[str]:
    return sorted(d for d in os.listdir(self.root)
                  if not d.startswith('.') and os.path.isdir(os.path.join(self.root, d)))

  def cameras(self, scene: str) -> dict[str, np.ndarray]:
    path = os.path.join(self.root, scene, 'cameras.npz')
    if not os.path.exists(path):
      raise FileNotFoundError(f'{path!r} missing: this store was not written by build_scene_store.')
    with np.load(path) as z:
      return {k: z[k] for k in z.files}

  def frame(self, scene: str, frame: int, keys=None, out=None) -> dict[str, np.ndarray]:
    """Arrays of one frame (keys: which, default all; out: preallocated arrays to read .npz members into)."""
    d = os.path.join(self.root, scene)
    for path in (frame_path(d, frame), frame_path(d, frame, ext='pt'),
                 frame_path(d, frame, ext='pt', reference_pd_names=True)):
      if os.path.exists(path):
        return load_frame(path, keys, out)
    raise FileNotFoundError(f'point cloud of {scene} frame {frame} not found under {d!r} '
                            f'(looked for {os.path.basename(frame_path(d, frame))} and the reference .pt names).')
