"""GCD camera conventions (docs/reference.md §1.4, §4.4, §4.9), NumPy float64 (host side, data pipeline).

Conventions
* Spherical (az°, el°, r m): elevation is the *latitude* above the XY plane (0 = horizon, + = above),
  azimuth counter-clockwise about +Z from +X; `x = r·cos(el)·cos(az)`, `y = r·cos(el)·sin(az)`,
  `z = r·sin(el)`. Cameras orbit the point ORBIT_CENTER = (0, 0, 1): their position is the Cartesian
  point plus 1 m in z, and they look at (0, 0, 1) (§1.4). World up = +Z.
* Extrinsics are camera-to-world 4×4 ("c2w"): rotation columns = the camera's (right, down, forward)
  axes in world coordinates (OpenCV camera frame), translation = camera position.
  `world_to_camera(x) = (x − t)·R`, `camera_to_world(x_c) = x_c·Rᵀ + t` (§4.9).
* Intrinsics in pixels, pixel centres at integer coordinates (no +0.5 anywhere, §4.9); Kubric's
  normalised K (`[[fx,0,−.5],[0,−fy,−.5],[0,0,−1]]`) becomes `|K|` with rows 0/1 scaled by W/H (§4.4).
* Kubric/Blender camera poses (quaternion (w, x, y, z) of the Blender camera: x right, y up, −z
  forward) become GCD c2w by negating rotation columns 1 and 2 (§4.4).
"""

from __future__ import annotations

import numpy as np

ORBIT_CENTER = np.array([0.0, 0.0, 1.0])  # look-at point and orbit centre of all Kubric cameras (§1.4)
WORLD_DOWN = np.array([0.0, 0.0, -1.0])  # extrinsics_from_look_at's reference "down" (§4.9)

# Kubric-4D's 16 static cameras (§4.1): views 0–3 at el 45°, az 0/90/180/270; views 4–15 at el 5°,
# az (v − 4 + 0.5)·30°; radius 15 m; look-at (0, 0, 1).
KUBRIC_NUM_VIEWS = 16
KUBRIC_CAMERA_RADIUS = 15.0


def kubric_view_spherical(radius: float = KUBRIC_CAMERA_RADIUS) -> np.ndarray:
  """(az°, el°, r) of Kubric-4D's 16 views (§4.1). → [16, 3] float64."""
  az = np.concatenate([np.arange(4) * 90.0, (np.arange(12) + 0.5) * 30.0])
  el = np.concatenate([np.full(4, 45.0), np.full(12, 5.0)])
  return np.stack([az, el, np.full(16, float(radius))], -1)


def cartesian_from_spherical(az_deg, el_deg, r) -> np.ndarray:
  """GCD spherical → Cartesian, WITHOUT the +1 m z offset (`geometry.cartesian_from_spherical`).

  az_deg, el_deg, r: broadcastable arrays (degrees, degrees, metres) → [..., 3] float64.
  """
  az = np.deg2rad(np.asarray(az_deg, np.float64))
  el = np.deg2rad(np.asarray(el_deg, np.float64))
  r = np.asarray(r, np.float64)
  az, el, r = np.broadcast_arrays(az, el, r)
  return np.stack([r * np.cos(el) * np.cos(az), r * np.cos(el) * np.sin(az), r * np.sin(el)], -1)


def spherical_from_cartesian(xyz) -> np.ndarray:
  """Inverse of `cartesian_from_spherical` (no offset). [..., 3] → [..., 3] (az° in (−180, 180], el°, r)."""
  xyz = np.asarray(xyz, np.float64)
  r = np.linalg.norm(xyz, axis=-1)
  az = np.rad2deg(np.arctan2(xyz[..., 1], xyz[..., 0]))
  el = np.rad2deg(np.arctan2(xyz[..., 2], np.linalg.norm(xyz[..., :2], axis=-1)))
  return np.stack([az, el, r], -1)


def camera_position_from_spherical(az_deg, el_deg, r) -> np.ndarray:
  """Camera position of a GCD orbit camera: spherical point + ORBIT_CENTER (z + 1 m, §1.4). → [..., 3]."""
  return cartesian_from_spherical(az_deg, el_deg, r) + ORBIT_CENTER


def extrinsics_from_look_at(position, look_at) -> np.ndarray:
  """Camera-to-world 4×4 of a camera at `position` looking at `look_at` (§4.9, `geometry.py`).

  forward = normalize(look_at − position); right = normalize(cross((0,0,−1), forward));
  down = cross(forward, right); R = [right | down | forward] (columns).
  position, look_at: [..., 3] (broadcastable) → [..., 4, 4] float64. Straight up/down is degenerate.
  """
  p = np.asarray(position, np.float64)
  l = np.asarray(look_at, np.float64)
  p, l = np.broadcast_arrays(p, l)
  forward = l - p
  norm = np.linalg.norm(forward, axis=-1, keepdims=True)
  if np.any(norm == 0):
    raise ValueError('extrinsics_from_look_at: position equals look_at; the viewing direction is undefined')
  forward = forward / norm
  right = np.cross(WORLD_DOWN, forward)
  rnorm = np.linalg.norm(right, axis=-1, keepdims=True)
  if np.any(rnorm < 1e-12):
    raise ValueError('extrinsics_from_look_at: camera looks straight up/down (forward ∥ world z); the '
                     'right axis is undefined — keep |elevation| < 90°')
  right = right / rnorm
  down = np.cross(forward, right)
  out = np.zeros(p.shape[:-1] + (4, 4))
  out[..., :3, :3] = np.stack([right, down, forward], -1)
  out[..., :3, 3] = p
  out[..., 3, 3] = 1.0
  return out


def extrinsics_from_spherical(spherical) -> np.ndarray:
  """Orbit camera(s) at spherical (az°, el°, r) looking at ORBIT_CENTER. [..., 3] → [..., 4, 4]."""
  s = np.asarray(spherical, np.float64)
  pos = camera_position_from_spherical(s[..., 0], s[..., 1], s[..., 2])
  return extrinsics_from_look_at(pos, np.broadcast_to(ORBIT_CENTER, pos.shape))


def world_to_camera(xyz_world, c2w) -> np.ndarray:
  """(x − t)·R (§4.9). xyz_world [..., 3], c2w [4, 4] → [..., 3]."""
  c2w = np.asarray(c2w, np.float64)
  return (np.asarray(xyz_world, np.float64) - c2w[:3, 3]) @ c2w[:3, :3]


def camera_to_world(xyz_camera, c2w) -> np.ndarray:
  """x_c·Rᵀ + t. xyz_camera [..., 3], c2w [4, 4] → [..., 3]."""
  c2w = np.asarray(c2w, np.float64)
  return np.asarray(xyz_camera, np.float64) @ c2w[:3, :3].T + c2w[:3, 3]


def intrinsics_matrix(fx, fy, cx, cy) -> np.ndarray:
  """Pixel intrinsics [[fx,0,cx],[0,fy,cy],[0,0,1]] (float64)."""
  return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], np.float64)


def kubric_intrinsics(k_normalized, width: int, height: int) -> np.ndarray:
  """Kubric normalised K (sign convention `[[fx,0,−.5],[0,−fy,−.5],[0,0,−1]]`) → pixel K (§4.4).

  `|K|`, row 0 × W, row 1 × H (so cx = W/2, cy = H/2), row 2 = (0, 0, 1). [3, 3] (or [..., 3, 3]).
  """
  k = np.abs(np.asarray(k_normalized, np.float64))
  if k.shape[-2:] != (3, 3):
    raise ValueError(f'camera.K must be 3×3, got shape {k.shape}')
  k = k.copy()
  k[..., 0, :] *= width
  k[..., 1, :] *= height
  k[..., 2, :] = (0.0, 0.0, 1.0)
  return k


def kubric_normalized_intrinsics(fx_px, fy_px, width: int, height: int) -> np.ndarray:
  """Inverse of `kubric_intrinsics` for a centred camera: Kubric's normalised K with its signs."""
  return np.array([[fx_px / width, 0.0, -0.5], [0.0, -fy_px / height, -0.5], [0.0, 0.0, -1.0]], np.float64)


def render_intrinsics(k_normalized_abs, render_width: int, render_height: int,
                      source_aspect: float) -> np.ndarray:
  """§4.8 step 1: normalised |K| × (W_r, H_r), then the aspect rule equivalent to a centre crop.

  If the render aspect W_r/H_r is wider than `source_aspect` (+1e-3), fy := fx; if narrower, fx := fy
  (`synth_src_dst_rgb`, Kubric source aspect 576/384, PD 640/480). k_normalized_abs: [3, 3] (signs
  are dropped here anyway) → [3, 3] float64.
  """
  k = np.abs(np.asarray(k_normalized_abs, np.float64)).copy()
  k[0] *= render_width
  k[1] *= render_height
  k[2] = (0.0, 0.0, 1.0)
  new_ar = render_width / render_height
  if new_ar > source_aspect + 1e-3:
    k[1, 1] = k[0, 0]
  elif new_ar < source_aspect - 1e-3:
    k[0, 0] = k[1, 1]
  return k


def normalize_intrinsics(k_pixels, width: int, height: int) -> np.ndarray:
  """Pixel K → normalised K (rows 0/1 divided by W/H; positive signs, as PD's `sample_trajectories`)."""
  k = np.asarray(k_pixels, np.float64).copy()
  k[..., 0, :] /= width
  k[..., 1, :] /= height
  k[..., 2, :] = (0.0, 0.0, 1.0)
  return k


# ------------------------------------------------------------------------------------------ quaternions

def quaternion_to_matrix(q) -> np.ndarray:
  """Unit quaternion (w, x, y, z) → rotation matrix (pyquaternion's `rotation_matrix`). [..., 4] → [..., 3, 3]."""
  q = np.asarray(q, np.float64)
  q = q / np.linalg.norm(q, axis=-1, keepdims=True)
  w, x, y, z = np.moveaxis(q, -1, 0)
  return np.stack([
      np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
      np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
      np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
  ], -2)


def matrix_to_quaternion(rot) -> np.ndarray:
  """Rotation matrix → unit quaternion (w, x, y, z) with w ≥ 0. [..., 3, 3] → [..., 4]."""
  m = np.asarray(rot, np.float64)
  flat = m.reshape(-1, 3, 3)
  out = np.empty((flat.shape[0], 4))
  for i, r in enumerate(flat):  # Shepperd's method: branch on the largest diagonal term for stability.
    tr = np.trace(r)
    if tr > 0:
      s = np.sqrt(tr + 1.0) * 2
      q = [0.25 * s, (r[2, 1] - r[1, 2]) / s, (r[0, 2] - r[2, 0]) / s, (r[1, 0] - r[0, 1]) / s]
    elif r[0, 0] > r[1, 1] and r[0, 0] > r[2, 2]:
      s = np.sqrt(1.0 + r[0, 0] - r[1, 1] - r[2, 2]) * 2
      q = [(r[2, 1] - r[1, 2]) / s, 0.25 * s, (r[0, 1] + r[1, 0]) / s, (r[0, 2] + r[2, 0]) / s]
    elif r[1, 1] > r[2, 2]:
      s = np.sqrt(1.0 + r[1, 1] - r[0, 0] - r[2, 2]) * 2
      q = [(r[0, 2] - r[2, 0]) / s, (r[0, 1] + r[1, 0]) / s, 0.25 * s, (r[1, 2] + r[2, 1]) / s]
    else:
      s = np.sqrt(1.0 + r[2, 2] - r[0, 0] - r[1, 1]) * 2
      q = [(r[1, 0] - r[0, 1]) / s, (r[0, 2] + r[2, 0]) / s, (r[1, 2] + r[2, 1]) / s, 0.25 * s]
    q = np.asarray(q) / np.linalg.norm(q)
    out[i] = -q if q[0] < 0 else q
  return out.reshape(m.shape[:-2] + (4,))


_BLENDER_FLIP = np.array([1.0, -1.0, -1.0])  # negate columns 1, 2: (right, up, back) ↔ (right, down, forward)


def blender_to_opencv_extrinsics(positions, quaternions) -> np.ndarray:
  """Kubric/Blender camera poses → GCD camera-to-world (§4.4). positions [..., 3], quaternions
  (w, x, y, z) [..., 4] → [..., 4, 4] float64 (columns 1 and 2 of the rotation negated)."""
  rot = quaternion_to_matrix(quaternions) * _BLENDER_FLIP
  positions = np.asarray(positions, np.float64)
  out = np.zeros(rot.shape[:-2] + (4, 4))
  out[..., :3, :3] = rot
  out[..., :3, 3] = positions
  out[..., 3, 3] = 1.0
  return out


def opencv_to_blender_pose(c2w) -> tuple[np.ndarray, np.ndarray]:
  """GCD camera-to-world [..., 4, 4] → Kubric (positions [..., 3], quaternions (w,x,y,z) [..., 4])."""
  c2w = np.asarray(c2w, np.float64)
  return c2w[..., :3, 3].copy(), matrix_to_quaternion(c2w[..., :3, :3] * _BLENDER_FLIP)


def relative_pose(c2w_src, c2w_dst) -> np.ndarray:
  """6-DoF relative pose `(inv(RT_src) @ RT_dst)[:3, :4]` (§1.4). [..., 4, 4] × 2 → [..., 3, 4]."""
  return (np.linalg.inv(np.asarray(c2w_src, np.float64)) @ np.asarray(c2w_dst, np.float64))[..., :3, :4]
