"""Camera trajectories and the training pose sampling of GCD (docs/reference.md §1.3, §1.4, §4.5–4.7), NumPy.

Public API
  trajectory_alpha(num_frames, move_time, kind)                 → α_t [T]
  construct_trajectory(start, end, num_frames, move_time, kind) → (spherical_src [T,3], spherical_dst [T,3])
  relative_angles(src, dst)                                     → [T,3] (Δaz rad, Δel rad, Δr m) float32
  motion_bucket_id(start, end, delta_az_range, delta_el_range)  → int
  trajectory_config(preset)                                     → ConfigDict (max90/max180, gradual/direct, PD)
  sample_clip(rng, cfg)                                         → frame_skip/start, clip_frames, reverse, fps
  sample_spherical_endpoints(rng, cfg)                          → (start [3], end [3]) in (az°, el°, r)
  sample_kubric_clip_and_trajectory(rng, cfg)                   → dict (see its docstring)
  pardom_topdown_trajectory(num_frames, move_time, kind)        → positions/look-ats/c2w of §4.6
  sample_pardom_clip_and_trajectory(rng, cfg)                   → dict like the Kubric one

Randomness comes only from the `np.random.Generator` passed in (the reference uses NumPy's global
RNG; the draw order here is: skip, start, reverse, az_start, el_start, r_start, az_end, el_end, r_end).
"""

from __future__ import annotations

import math

import ml_collections
import numpy as np

from gcd_jax.geometry import cameras

TRAJECTORY_KINDS = ('interpol_linear', 'interpol_sine')


def trajectory_alpha(num_frames: int, move_time: int, kind: str = 'interpol_linear') -> np.ndarray:
  """Blend weights α_t of `construct_trajectory` (§4.7, Appendix C). → [T] float64.

  t < move_time: α = t/move_time (linear) or (1 − cos(π t/move_time))/2 (sine); t ≥ move_time: 1.
  move_time = 0 ("direct"): all ones.
  """
  if kind not in TRAJECTORY_KINDS:
    raise ValueError(f'unknown trajectory {kind!r}; choose one of {TRAJECTORY_KINDS}')
  if move_time < 0:
    raise ValueError(f'move_time must be ≥ 0 (0 = direct, T−1 = gradual), got {move_time}')
  t = np.arange(num_frames, dtype=np.float64)
  if move_time == 0:
    return np.ones(num_frames)
  frac = t / move_time
  a = frac if kind == 'interpol_linear' else (1.0 - np.cos(frac * np.pi)) / 2.0
  return np.where(t < move_time, a, 1.0)


def construct_trajectory(start, end, num_frames: int, move_time: int,
                         kind: str = 'interpol_linear') -> tuple[np.ndarray, np.ndarray]:
  """`common.py :: construct_trajectory` (§4.7). start, end: [3] (az°, el°, r) → (src [T,3], dst [T,3]).

  The source camera is static (src[t] = start); dst[t] = (1−α_t)·start + α_t·end component-wise.
  """
  start = np.asarray(start, np.float64)
  end = np.asarray(end, np.float64)
  alpha = trajectory_alpha(num_frames, move_time, kind)[:, None]
  src = np.tile(start[None], (num_frames, 1))
  dst = (1.0 - alpha) * start + alpha * end
  dst[alpha[:, 0] == 1.0] = end  # exact end pose (no rounding from the blend) once the move is done
  return src, dst


def relative_angles(spherical_src, spherical_dst) -> np.ndarray:
  """`scaled_relative_angles` (§1.4): dst − src with az/el in radians, r in metres; no wrapping, no
  scaling. [T, 3] × 2 → [T, 3] float32."""
  d = np.asarray(spherical_dst, np.float64) - np.asarray(spherical_src, np.float64)
  d = d * np.array([np.pi / 180.0, np.pi / 180.0, 1.0])
  return d.astype(np.float32)


def motion_bucket_id(start, end, delta_az_range, delta_el_range, bucket_range=(0, 255)) -> int:
  """§1.3: ‖(Δaz°, Δel°)‖ / ‖(max Δaz range, max Δel range)‖ → round(lo + (hi − lo)·amount)."""
  start = np.asarray(start, np.float64)
  end = np.asarray(end, np.float64)
  motion = float(np.linalg.norm(end[:2] - start[:2]))
  max_motion = float(np.linalg.norm([max(delta_az_range), max(delta_el_range)]))
  lo, hi = bucket_range
  return int(round(lo + (hi - lo) * motion / max_motion))


# ------------------------------------------------------------------------------------------------ config

def trajectory_config(preset: str = 'kubric_gradual_max90') -> ml_collections.ConfigDict:
  """Pose-sampling config. `preset` = tokens joined by '_' or ',' (any order), then 'key=value' items:

  dataset  'kubric' (default) | 'pardom'
  motion   'gradual' (move_time = T−1 = 13, default) | 'direct' (move_time 0)
  range    'max90' (Δaz ±90°, Δel ±30°, default) | 'max180' (±180°, ±60°)   (Kubric only, §3)
  e.g. 'kubric_gradual_max90', 'direct,max180', 'pardom_gradual', 'max90,num_frames=4,total_frames=12'.
  Kubric: elevation_range [0, 50], sin-uniform start elevation, radius [12, 18], Δr ±3, azimuth [0, 360],
  reverse_prob 0.2, fps 24, total_frames 60, max_frame_offset 6, interpol_linear (§4.5).
  PD: frame skip ≤ 2, fps 10, total_frames 50, reverse 0, interpol_sine, ego_forward → topdown1 (§4.6).
  """
  tokens = [t for part in preset.split(',') for t in ([part] if '=' in part else part.split('_')) if t]
  overrides = [t for t in tokens if '=' in t]
  names = [t for t in tokens if '=' not in t]
  unknown = [n for n in names if n not in ('kubric', 'pardom', 'gradual', 'direct', 'max90', 'max180')]
  if unknown:
    raise ValueError(f'unknown trajectory preset token(s) {unknown} in {preset!r}; use kubric|pardom, '
                     'gradual|direct, max90|max180 and key=value overrides')
  c = ml_collections.ConfigDict()
  c.dataset = 'pardom' if 'pardom' in names else 'kubric'
  c.num_frames = 14                    # model frames T
  c.total_frames = 60 if c.dataset == 'kubric' else 50  # frames available per scene
  c.fps = 24 if c.dataset == 'kubric' else 10           # frame rate of the scene videos
  c.max_frame_offset = 6 if c.dataset == 'kubric' else -1  # -1: no cap on frame_start (§4.6)
  c.max_frame_skip = -1 if c.dataset == 'kubric' else 2    # -1: ⌊total_frames / num_frames⌋ (§4.5)
  c.reverse_prob = 0.2 if c.dataset == 'kubric' else 0.0
  c.gradual = 'direct' not in names
  c.move_time = -1                     # -1: num_frames − 1 if gradual else 0
  c.trajectory = 'interpol_linear' if c.dataset == 'kubric' else 'interpol_sine'
  big = 'max180' in names
  c.azimuth_range = (0.0, 360.0)
  c.elevation_range = (0.0, 50.0)
  c.radius_range = (12.0, 18.0)
  c.delta_azimuth_range = (-180.0, 180.0) if big else (-90.0, 90.0)
  c.delta_elevation_range = (-60.0, 60.0) if big else (-30.0, 30.0)
  c.delta_radius_range = (-3.0, 3.0)
  c.elevation_sample_sin = True
  c.motion_bucket_range = (0, 255) if c.dataset == 'kubric' else (127, 127)
  # ParallelDomain ego_forward → topdown1 (§4.6), ego frame (+x forward, +z up).
  c.pd_src_position = (1.60, 0.0, 1.55)
  c.pd_src_look_at = (6.60, 0.0, 1.55)
  c.pd_dst_position = (-8.0, 0.0, 8.0)
  c.pd_dst_look_at = (5.60, 0.0, 1.55)
  for item in overrides:
    key, _, value = item.partition('=')
    if key not in c:
      raise KeyError(f'unknown trajectory config field {key!r} in {preset!r}')
    old = c[key]
    if isinstance(old, bool):
      c[key] = value.lower() in ('1', 'true', 'yes')
    elif isinstance(old, tuple):
      c[key] = tuple(float(v) for v in value.strip('()[]').split(':'))
    else:
      c[key] = type(old)(value)
  return c


def resolve_move_time(cfg) -> int:
  return int(cfg.move_time) if cfg.move_time >= 0 else (cfg.num_frames - 1 if cfg.gradual else 0)


# ------------------------------------------------------------------------------------------------ sampling

def sample_clip(rng: np.random.Generator, cfg) -> dict:
  """Clip sampling of §4.5 (Kubric) / §4.6 (PD): → frame_skip, frame_start, reverse, clip_frames [T], fps.

  skip ~ U{1..max_skip} (max_skip = ⌊F/T⌋, or cfg.max_frame_skip); cover = skip·(T−1)+1;
  max_start = F − cover − 1; start ~ U{0..max(min(max_start, max_frame_offset), 0)};
  clip_frames = start + skip·[0..T−1], reversed with prob reverse_prob; fps = round(fps/skip).
  """
  t, f = int(cfg.num_frames), int(cfg.total_frames)
  max_skip = cfg.max_frame_skip if cfg.max_frame_skip > 0 else f // t
  if max_skip < 1 or (t - 1) + 1 > f:
    raise ValueError(f'a clip of {t} frames does not fit in {f} scene frames; lower num_frames or use '
                     'longer scenes')
  skip = int(rng.integers(1, max_skip + 1))
  cover = skip * (t - 1) + 1
  max_start = f - cover - 1
  cap = max_start if cfg.max_frame_offset < 0 else min(max_start, cfg.max_frame_offset)
  start = int(rng.integers(0, max(cap, 0) + 1))
  # The reference draws the reversal only when reverse_prob > 0 matters; we always draw to keep the
  # stream aligned across configs.
  reverse = bool(rng.random() < cfg.reverse_prob)
  clip_frames = start + skip * np.arange(t)
  if clip_frames[-1] > f - 1:
    raise ValueError(f'clip {clip_frames} exceeds the {f} scene frames')
  if reverse:  # only the frame order; the camera trajectory is never reversed (§6 item 25)
    clip_frames = clip_frames[::-1].copy()
  return {'frame_skip': skip, 'frame_start': start, 'reverse': reverse, 'clip_frames': clip_frames,
          'fps': int(round(cfg.fps / skip))}


def sample_spherical_endpoints(rng: np.random.Generator, cfg) -> tuple[np.ndarray, np.ndarray]:
  """Camera start/end of `sample_trajectories` (§4.5): → (start, end), each (az°, el°, r) float64.

  az_start ~ U(azimuth_range); el_start = asin(U(sin el_lo, sin el_hi)) (sin-uniform) or U(el range);
  r_start ~ U(radius_range). az_end = az_start + U(Δaz) (clamped to azimuth_range only when that spans
  < 360°); el_end ~ U(max(el_start+Δel_lo, el_lo), min(el_start+Δel_hi, el_hi)); r_end likewise in
  the radius range. Zero-width Δ ranges are fixed offsets; one-element Δel/Δr lists absolute values.
  """
  az_rng, el_rng, r_rng = cfg.azimuth_range, cfg.elevation_range, cfg.radius_range
  daz, del_, dr = cfg.delta_azimuth_range, cfg.delta_elevation_range, cfg.delta_radius_range

  def uniform(lo, hi):
    return float(lo) if hi - lo <= 0 else float(rng.uniform(lo, hi))

  az0 = uniform(*az_rng)
  if el_rng[1] - el_rng[0] <= 0:
    el0 = float(el_rng[0])
  elif cfg.elevation_sample_sin:
    el0 = math.degrees(math.asin(rng.uniform(math.sin(math.radians(el_rng[0])),
                                             math.sin(math.radians(el_rng[1])))))
  else:
    el0 = float(rng.uniform(*el_rng))
  r0 = uniform(*r_rng)

  if daz[1] - daz[0] <= 0:
    az1 = az0 + daz[0]
  elif az_rng[1] - az_rng[0] >= 360.0:
    az1 = az0 + float(rng.uniform(*daz))
  else:
    az1 = float(rng.uniform(max(az0 + daz[0], az_rng[0]), min(az0 + daz[1], az_rng[1])))

  def end_value(v0, delta, rng_lim):
    if len(delta) != 2:
      return float(delta[0])  # absolute value (reference behaviour for one-element lists)
    if delta[1] - delta[0] <= 0:
      return v0 + delta[0]
    return float(rng.uniform(max(v0 + delta[0], rng_lim[0]), min(v0 + delta[1], rng_lim[1])))

  el1 = end_value(el0, del_, el_rng)
  r1 = end_value(r0, dr, r_rng)
  return np.array([az0, el0, r0]), np.array([az1, el1, r1])


def sample_kubric_clip_and_trajectory(rng: np.random.Generator, cfg, *, spherical_start=None,
                                      spherical_end=None) -> dict:
  """One training example's clip and cameras (§4.5, `KubricSynthViewDataset.__getitem__` +
  `sample_trajectories` + `construct_dict`). cfg: `trajectory_config(...)`.

  Returns dict:
    frame_skip, frame_start (int), reverse (bool), clip_frames [T] int64, fps (int),
    spherical_start, spherical_end [3] (az°, el°, r), spherical_src, spherical_dst [T, 3],
    src_c2w, dst_c2w [T, 4, 4] float64 (orbit cameras, +1 m z, look-at (0,0,1)),
    scaled_relative_angles [T, 3] float32, scaled_relative_pose [T, 3, 4] float32,
    motion_amount (float), motion_bucket_id (int).
  Pass spherical_start/end to fix the cameras (test-time control, `set_next_example`).
  """
  out = sample_clip(rng, cfg)
  start, end = sample_spherical_endpoints(rng, cfg)
  if spherical_start is not None:
    start = np.asarray(spherical_start, np.float64)
  if spherical_end is not None:
    end = np.asarray(spherical_end, np.float64)
  src, dst = construct_trajectory(start, end, cfg.num_frames, resolve_move_time(cfg), cfg.trajectory)
  src_c2w = cameras.extrinsics_from_spherical(src)
  dst_c2w = cameras.extrinsics_from_spherical(dst)
  max_motion = float(np.linalg.norm([max(cfg.delta_azimuth_range), max(cfg.delta_elevation_range)]))
  out.update(
      spherical_start=start, spherical_end=end, spherical_src=src, spherical_dst=dst,
      src_c2w=src_c2w, dst_c2w=dst_c2w,
      scaled_relative_angles=relative_angles(src, dst),
      scaled_relative_pose=cameras.relative_pose(src_c2w, dst_c2w).astype(np.float32),
      motion_amount=float(np.linalg.norm(end[:2] - start[:2])) / max_motion,
      motion_bucket_id=motion_bucket_id(start, end, cfg.delta_azimuth_range, cfg.delta_elevation_range,
                                        cfg.motion_bucket_range))
  return out


def pardom_topdown_trajectory(num_frames: int = 14, move_time: int = 13, kind: str = 'interpol_sine',
                              src_position=(1.60, 0.0, 1.55), src_look_at=(6.60, 0.0, 1.55),
                              dst_position=(-8.0, 0.0, 8.0), dst_look_at=(5.60, 0.0, 1.55)) -> dict:
  """ParallelDomain ego_forward → topdown1 (§4.6): Cartesian blends of position and look-at with the
  trajectory weights (sine easing for PD; frame 0 = the ego-forward view when gradual).

  → dict: src_position/src_look_at/dst_position/dst_look_at [T, 3], src_c2w/dst_c2w [T, 4, 4] float64.
  """
  alpha = trajectory_alpha(num_frames, move_time, kind)[:, None]
  sp, sl = np.asarray(src_position, np.float64), np.asarray(src_look_at, np.float64)
  dp, dl = np.asarray(dst_position, np.float64), np.asarray(dst_look_at, np.float64)
  pos = (1 - alpha) * sp + alpha * dp
  look = (1 - alpha) * sl + alpha * dl
  src_p, src_l = np.tile(sp, (num_frames, 1)), np.tile(sl, (num_frames, 1))
  return {'src_position': src_p, 'src_look_at': src_l, 'dst_position': pos, 'dst_look_at': look,
          'src_c2w': cameras.extrinsics_from_look_at(src_p, src_l),
          'dst_c2w': cameras.extrinsics_from_look_at(pos, look)}


def sample_pardom_clip_and_trajectory(rng: np.random.Generator, cfg) -> dict:
  """PD training example (§4.6): clip (skip ≤ 2, no reversal) + the fixed ego_forward → topdown1 camera
  path. Same keys as the Kubric sampler (spherical_* omitted); relative angles are zeros, motion bucket
  fixed (cfg.motion_bucket_range[0] = 127)."""
  out = sample_clip(rng, cfg)
  traj = pardom_topdown_trajectory(cfg.num_frames, resolve_move_time(cfg), cfg.trajectory,
                                   cfg.pd_src_position, cfg.pd_src_look_at, cfg.pd_dst_position,
                                   cfg.pd_dst_look_at)
  out.update(traj)
  out.update(scaled_relative_angles=np.zeros((cfg.num_frames, 3), np.float32),
             scaled_relative_pose=cameras.relative_pose(traj['src_c2w'], traj['dst_c2w']).astype(np.float32),
             motion_amount=0.5, motion_bucket_id=int(cfg.motion_bucket_range[0]))
  return out
