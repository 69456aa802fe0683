"""Test controls: the reference's control JSON formats (docs/reference.md §5.2) and a seeded generator.

Formats (`eval/list/*.json`), one entry per scene name and `sample_XX` (XX = --control-idx):
* Kubric-4D  `{"scn02900": {"sample_00": {"spherical_start": [az°, el°, r], "spherical_end": [az°, el°, r],
              "frame_start": int, "frame_skip": int}}}`; fps = round(24 / frame_skip).
* ParallelDomain-4D `{"scene_000123": {"sample_00": {"frame_start": int, "frame_skip": 1|2, "fps": 10|5}}}`
  (frame bounds only: the PD trajectory is the fixed ego-forward → top-down one, §4.6).

Datasets without a control file (the procedural dataset, a Kubric split without the missing Kubric JSONs,
§6 item 16) get controls from `generate_kubric_controls`: Kubric's test convention — the source camera
aligned with dataset view 4 (az 15°, el 5°, r 15 m, §5.1) — and the target drawn as in training (§4.5):
Δaz ~ U(trajectory's Δaz range), el_end ~ U(max(el0+Δel_min, 0), min(el0+Δel_max, 50)), r_end ~
U(max(r0−3, 12), min(r0+3, 18)), frame_skip ~ U{1..⌊F/T⌋}, frame_start ~ U{0..max(min(F−cover−1, 6), 0)}.
The generator is keyed by (seed, scene index, control index) only, so a scene's controls do not depend on
which other scenes are in the list.
"""

from __future__ import annotations

import json
import os
import re

import numpy as np

from gcd_jax import fileio

KUBRIC_FPS = 24
PARDOM_FPS = 10
# §5.1: the Kubric test input is aligned with dataset view 4.
KUBRIC_SOURCE_VIEW = 4
KUBRIC_SOURCE_SPHERICAL = (15.0, 5.0, 15.0)


class ControlError(ValueError):
  """A control file that does not fit the scene list / dataset."""


def sample_name(control_idx: int) -> str:
  return f'sample_{int(control_idx):02d}'


def scene_index_from_name(name: str) -> int:
  """`scn02900` / `scene_000123` / any name ending in digits → 2900 / 123 (the reference's rule: the
  basename decides the scene, the directory prefix in a list file is ignored, §5.1)."""
  m = re.search(r'(\d+)$', os.path.basename(name.rstrip('/')))
  if not m:
    raise ControlError(f'scene name {name!r} has no trailing scene number (expected scnXXXXX or scene_XXXXXX)')
  return int(m.group(1))


def load_controls(path: str) -> dict:
  try:
    with open(path) as f:
      data = json.load(f)
  except FileNotFoundError as e:
    raise ControlError(f'control file {path} not found') from e
  except json.JSONDecodeError as e:
    raise ControlError(f'control file {path} is not valid JSON: {e}') from e
  if not isinstance(data, dict):
    raise ControlError(f'control file {path}: expected {{scene: {{sample_XX: {{...}}}}}}, got {type(data).__name__}')
  return data


def write_controls(path: str, controls: dict) -> None:
  fileio.write_json(path, controls, sort_keys=True)


def control_for(controls: dict, scene: str, control_idx: int, kind: str) -> dict:
  """The normalised control of one scene: {'frame_start', 'frame_skip', 'fps'} plus, for Kubric-like
  data, 'spherical_start'/'spherical_end' ([az°, el°, r]). kind: 'kubric' | 'pardom'."""
  base = os.path.basename(scene.rstrip('/'))
  if base not in controls:
    raise ControlError(f'scene {base} has no entry in the control file; generate controls for this list '
                       '(leave out --controls) or use the control file that belongs to this split')
  entry = controls[base].get(sample_name(control_idx))
  if entry is None:
    raise ControlError(f'scene {base} has no {sample_name(control_idx)} in the control file (available: '
                       f'{sorted(controls[base])}); pass another --control-idx')
  try:
    out = {'frame_start': int(entry['frame_start']), 'frame_skip': int(entry['frame_skip'])}
    if kind == 'kubric':
      out['spherical_start'] = [float(v) for v in entry['spherical_start']]
      out['spherical_end'] = [float(v) for v in entry['spherical_end']]
      out['fps'] = int(entry.get('fps', round(KUBRIC_FPS / out['frame_skip'])))
    else:
      out['fps'] = int(entry.get('fps', round(PARDOM_FPS / out['frame_skip'])))
  except KeyError as e:
    raise ControlError(f'control entry {base}/{sample_name(control_idx)} lacks key {e}; expected the '
                       f'{kind} format of docs/reference.md §5.2') from e
  if out['frame_skip'] < 1 or out['frame_start'] < 0:
    raise ControlError(f'control entry {base}/{sample_name(control_idx)}: frame_start ≥ 0 and frame_skip ≥ 1 '
                       f'required, got {out["frame_start"]}, {out["frame_skip"]}')
  return out


def generate_kubric_controls(scene_names, traj_cfg, *, seed: int, num_controls: int = 1,
                             num_scene_frames: int | None = None) -> dict:
  """Seeded Kubric-format controls (see module docstring). traj_cfg: `geometry.trajectory.trajectory_config`
  (num_frames, total_frames, Δ ranges, elevation/radius ranges, fps); num_scene_frames overrides
  traj_cfg.total_frames (scenes shorter than Kubric's 60 frames)."""
  from gcd_jax.geometry import trajectory  # pylint: disable=g-import-not-at-top
  cfg = traj_cfg.copy_and_resolve_references()
  if num_scene_frames is not None:
    cfg.total_frames = int(num_scene_frames)
  cfg.reverse_prob = 0.0  # the test never reverses (set_next_example(..., reverse=False), §5.1)
  (daz_lo, daz_hi), (del_lo, del_hi) = cfg.delta_azimuth_range, cfg.delta_elevation_range
  (el_lo, el_hi), (r_lo, r_hi) = cfg.elevation_range, cfg.radius_range
  (dr_lo, dr_hi) = cfg.delta_radius_range
  out = {}
  for name in scene_names:
    base = os.path.basename(name.rstrip('/'))
    idx = scene_index_from_name(base)
    entry = {}
    for c in range(num_controls):
      rng = np.random.default_rng(np.random.SeedSequence([int(seed), idx, c, 0xC0]))
      clip = trajectory.sample_clip(rng, cfg)
      az0, el0, r0 = KUBRIC_SOURCE_SPHERICAL
      az1 = az0 + rng.uniform(daz_lo, daz_hi)
      el1 = rng.uniform(max(el0 + del_lo, el_lo), min(el0 + del_hi, el_hi))
      r1 = rng.uniform(max(r0 + dr_lo, r_lo), min(r0 + dr_hi, r_hi))
      entry[sample_name(c)] = {
          'spherical_start': [az0, el0, r0],
          'spherical_end': [round(float(az1), 4), round(float(el1), 4), round(float(r1), 4)],
          'frame_start': int(clip['frame_start']), 'frame_skip': int(clip['frame_skip']),
          'fps': int(clip['fps']),
      }
    out[base] = entry
  return out
