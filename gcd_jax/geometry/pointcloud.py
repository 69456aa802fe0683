"""RGB-D → point clouds (docs/reference.md §4.4; `data_utils.py :: unproject_pixels_to_points`,
`convert_pcl_kubric.py :: correct_depth_ball_plane_torch`), NumPy.

Every pixel is unprojected (no filtering), at integer pixel coordinates u = 0..W−1, v = 0..H−1:
`x_c = (u − cx)·z/fx`, `y_c = (v − cy)·z/fy`, `z_c = z`, world = `x_c·Rᵀ + t` (c2w, §4.9). Points are
ordered row-major (v major, u minor), i.e. point index = v·W + u, like the reference.

Kubric depth is the distance along the ray; the reference converts it to planar depth with an
*approximation* (§6 item 10): the per-pixel angles are `linspace(−fov/2, +fov/2, W)` (and H), with
`fov = 2·atan(W / (2·fx))`, instead of the exact `atan((u − cx)/fx)`. `correct_depth_ball_plane`
reproduces that approximation exactly (it is what the released data/models saw); `ray_to_planar_depth`
is the exact conversion (used where we need exact geometry, e.g. by choice in tests).
"""

from __future__ import annotations

import numpy as np


def correct_depth_ball_plane(depth_ball, k_pixels) -> np.ndarray:
  """Ray distance → planar depth, the reference's linspace-angle approximation (§4.4, §6 item 10).

  depth_ball [..., H, W], k_pixels [3, 3] (pixel intrinsics) → [..., H, W] (dtype of depth, ≥ float32).
  """
  depth = np.asarray(depth_ball)
  h, w = depth.shape[-2:]
  k = np.asarray(k_pixels, np.float64)
  fov_x = 2.0 * np.arctan(w / (2.0 * abs(k[0, 0])))
  fov_y = 2.0 * np.arctan(h / (2.0 * abs(k[1, 1])))
  tan_x = np.tan(np.linspace(-fov_x / 2.0, fov_x / 2.0, w))
  tan_y = np.tan(np.linspace(-fov_y / 2.0, fov_y / 2.0, h))
  correction = np.sqrt(tan_x[None, :] ** 2 + tan_y[:, None] ** 2 + 1.0)
  return (depth / correction).astype(np.result_type(depth.dtype, np.float32))


def ray_to_planar_depth(depth_ray, k_pixels) -> np.ndarray:
  """Exact ray distance → planar depth: z = d / ‖((u−cx)/fx, (v−cy)/fy, 1)‖. [..., H, W] → [..., H, W]."""
  depth = np.asarray(depth_ray)
  h, w = depth.shape[-2:]
  k = np.asarray(k_pixels, np.float64)
  tx = (np.arange(w) - k[0, 2]) / k[0, 0]
  ty = (np.arange(h) - k[1, 2]) / k[1, 1]
  norm = np.sqrt(tx[None, :] ** 2 + ty[:, None] ** 2 + 1.0)
  return (depth / norm).astype(np.result_type(depth.dtype, np.float32))


def planar_to_ray_depth(depth_planar, k_pixels) -> np.ndarray:
  """Inverse of `ray_to_planar_depth` (exact). [..., H, W] → [..., H, W]."""
  depth = np.asarray(depth_planar)
  h, w = depth.shape[-2:]
  k = np.asarray(k_pixels, np.float64)
  tx = (np.arange(w) - k[0, 2]) / k[0, 0]
  ty = (np.arange(h) - k[1, 2]) / k[1, 1]
  return (depth * np.sqrt(tx[None, :] ** 2 + ty[:, None] ** 2 + 1.0)).astype(
      np.result_type(depth.dtype, np.float32))


def unproject_depth(depth, k_pixels, c2w, ray_depth: bool = False, ray_correction: str = 'reference',
                    dtype=np.float64) -> np.ndarray:
  """Unproject every pixel of a depth map to world points (§4.4).

  depth [H, W]: planar camera z (ray_depth=False, PD) or distance along the ray (ray_depth=True, Kubric;
  converted first with `correct_depth_ball_plane` (ray_correction='reference', the reference's
  approximation) or `ray_to_planar_depth` ('exact')). k_pixels [3, 3], c2w [4, 4] → xyz [H·W, 3] (`dtype`).
  """
  depth = np.asarray(depth)
  if depth.ndim != 2:
    raise ValueError(f'unproject_depth expects one depth map [H, W], got shape {depth.shape}')
  k = np.asarray(k_pixels, np.float64)
  if ray_depth:
    if ray_correction == 'reference':
      depth = correct_depth_ball_plane(depth, k)
    elif ray_correction == 'exact':
      depth = ray_to_planar_depth(depth, k)
    else:
      raise ValueError(f"ray_correction must be 'reference' or 'exact', got {ray_correction!r}")
  h, w = depth.shape
  z = depth.astype(np.float64).reshape(-1)
  u, v = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64), indexing='xy')
  x = (u.reshape(-1) - k[0, 2]) * z / k[0, 0]
  y = (v.reshape(-1) - k[1, 2]) * z / k[1, 1]
  c2w = np.asarray(c2w, np.float64)
  xyz = np.stack([x, y, z], -1) @ c2w[:3, :3].T + c2w[:3, 3]
  return xyz.astype(dtype)


def merge_views(depths, features, intrinsics, extrinsics, ray_depth: bool = False,
                ray_correction: str = 'reference', dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
  """Merged point cloud of one frame seen by V views (§4.4: all pixels of all views, view-major).

  depths [V, H, W], features [V, H, W, C] (RGB, segmentation, ...), intrinsics [V, 3, 3] (pixels),
  extrinsics [V, 4, 4] (c2w) → (xyz [V·H·W, 3] `dtype`, features [V·H·W, C] (input dtype)).
  """
  depths = np.asarray(depths)
  features = np.asarray(features)
  if depths.ndim != 3 or features.shape[:3] != depths.shape:
    raise ValueError(f'merge_views: depths [V,H,W] and features [V,H,W,C] must agree, got {depths.shape} '
                     f'and {features.shape}')
  v = depths.shape[0]
  if len(intrinsics) != v or len(extrinsics) != v:
    raise ValueError(f'merge_views: {v} depth maps but {len(intrinsics)} intrinsics / {len(extrinsics)} extrinsics')
  xyz = np.concatenate([unproject_depth(depths[i], intrinsics[i], extrinsics[i], ray_depth, ray_correction,
                                        dtype) for i in range(v)])
  return xyz, features.reshape(-1, features.shape[-1])
