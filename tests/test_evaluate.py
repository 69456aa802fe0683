"""`gcd-jax evaluate` / `gcd-jax sample`: controls, inputs, reports, resume, determinism, end to end."""

import json
import os

import numpy as np
import pytest

from gcd_jax.evaluate import controls, evaluate as ev, inference, media
from tests.fixtures_evaluate import (HW, NUM_FRAMES, data_preset, eval_tfds, tiny_checkpoint,  # noqa: F401
                                     write_test_video)


# ------------------------------------------------------------------------------------------ controls


def test_controls_formats_and_generator(tmp_path):
  from gcd_jax.geometry import trajectory
  traj = trajectory.trajectory_config('kubric_gradual_max90')
  gen = controls.generate_kubric_controls(['eval/list/../scn02900', 'scn02901'], traj, seed=3, num_controls=2)
  again = controls.generate_kubric_controls(['scn02901'], traj, seed=3, num_controls=2)
  assert gen['scn02901'] == again['scn02901']  # keyed by (seed, scene, control) only
  for entry in gen.values():
    for c in entry.values():
      assert c['spherical_start'] == [15.0, 5.0, 15.0]  # dataset view 4 (§5.1)
      assert -75 <= c['spherical_end'][0] <= 105 and 0 <= c['spherical_end'][1] <= 35
      assert 12 <= c['spherical_end'][2] <= 18 and 1 <= c['frame_skip'] <= 4 and 0 <= c['frame_start'] <= 6
      assert c['fps'] == round(24 / c['frame_skip'])
  path = os.path.join(tmp_path, 'c.json')
  controls.write_controls(path, gen)
  k = controls.control_for(controls.load_controls(path), 'x/scn02900', 1, 'kubric')
  assert k == {**gen['scn02900']['sample_01'], 'fps': gen['scn02900']['sample_01']['fps']}
  # ParallelDomain format: frame bounds only.
  pd = {'scene_000123': {'sample_00': {'frame_start': 5, 'frame_skip': 2, 'fps': 5}}}
  assert controls.control_for(pd, 'scene_000123', 0, 'pardom') == {'frame_start': 5, 'frame_skip': 2, 'fps': 5}
  # Kubric format without fps: round(24 / frame_skip), as test.py
  kub = {'scn00007': {'sample_00': {'spherical_start': [15, 5, 15], 'spherical_end': [45, 20, 16],
                                    'frame_start': 1, 'frame_skip': 3}}}
  assert controls.control_for(kub, 'scn00007', 0, 'kubric')['fps'] == 8
  with pytest.raises(controls.ControlError, match='sample_01'):
    controls.control_for(kub, 'scn00007', 1, 'kubric')
  with pytest.raises(controls.ControlError, match='scn00008'):
    controls.control_for(kub, 'scn00008', 0, 'kubric')
  with pytest.raises(controls.ControlError, match='spherical_end'):
    controls.control_for({'scn1': {'sample_00': {'frame_start': 0, 'frame_skip': 1,
                                                 'spherical_start': [0, 0, 0]}}}, 'scn1', 0, 'kubric')


# ------------------------------------------------------------------------------------------- inputs


def test_input_checks_before_compute(tmp_path):
  video = write_test_video(os.path.join(tmp_path, 'v.mp4'), num_frames=12)
  ok = inference.InputSpec(video, num_frames=4, frame_stride=3, frame_width=64, frame_height=64)
  assert inference.validate_input(ok)['num_frames'] == 12
  with pytest.raises(inference.InputError, match='12 frames'):
    inference.validate_input(inference.InputSpec(video, num_frames=4, frame_stride=4, frame_width=64,
                                                 frame_height=64))
  with pytest.raises(inference.InputError, match='multiple of 64'):
    inference.validate_input(inference.InputSpec(video, num_frames=4, frame_width=100, frame_height=64))
  broken = os.path.join(tmp_path, 'broken.mp4')
  with open(broken, 'wb') as f:
    f.write(b'not a video at all')
  with pytest.raises(inference.InputError, match='cannot read video'):
    inference.validate_input(inference.InputSpec(broken, num_frames=4, frame_width=64, frame_height=64))
  with pytest.raises(inference.InputError, match='does not exist'):
    inference.validate_input(inference.InputSpec(os.path.join(tmp_path, 'nope.mp4'), frame_width=64,
                                                 frame_height=64))


def test_center_crop_resize_matches_bilinear_half_pixel():
  # 4×8 → crop to 4×4 (aspect 1) → identity; then 2× downsizing by half-pixel bilinear = 2×2 box mean.
  x = np.arange(4 * 8 * 3, dtype=np.uint8).reshape(1, 4, 8, 3)
  y = inference.center_crop_resize(x, 4, 4)
  np.testing.assert_allclose(y[0], x[0, :, 2:6] / 255.0, atol=1e-6)
  z = inference.center_crop_resize(np.repeat(np.repeat(x[:, :, 2:6], 2, 1), 2, 2), 4, 4)
  np.testing.assert_allclose(z, y, atol=1e-6)


# ----------------------------------------------------------------------------------------- reports


def _fake_result(scene, psnr, occ_nan=False):
  s, t = psnr.shape
  frame = {'psnr': psnr.tolist(), 'ssim': np.full((s, t), 0.5).tolist(),
           'psnr_occ': (np.full((s, t), np.nan) if occ_nan else psnr - 1).tolist()}
  frame['psnr_occ'] = [[None if np.isnan(v) else v for v in row] for row in frame['psnr_occ']]
  return {'scene': scene, 'frame': frame, 'scene_metrics': {'diversity': [0.1] * t}, 'video': {}}


def test_aggregate_mean_std_over_scenes_and_samples(tmp_path):
  r1 = _fake_result('a', np.array([[10.0, 12.0], [14.0, 16.0]]))       # videos: 11, 15
  r2 = _fake_result('b', np.array([[20.0, np.nan], [30.0, 30.0]]), occ_nan=True)  # videos: 20, 30
  table = ev.write_reports(str(tmp_path), [r1, r2])
  videos = np.array([11.0, 15.0, 20.0, 30.0])
  assert table['psnr']['n'] == 4
  assert abs(table['psnr']['mean'] - videos.mean()) < 1e-12 and abs(table['psnr']['std'] - videos.std()) < 1e-12
  assert table['psnr_occ']['n'] == 2  # scene b has nothing occluded → left out
  np.testing.assert_allclose(table['psnr']['per_frame_mean'], [(10 + 14 + 20 + 30) / 4, (12 + 16 + 30) / 3])
  for f in ('results.md', 'results.csv', 'results.json', 'curves_psnr.png', 'curves_ssim.png'):
    assert os.path.getsize(os.path.join(tmp_path, f)) > 0
  csv = open(os.path.join(tmp_path, 'results.csv')).read().splitlines()
  assert csv[0] == 'metric,mean,std,n' and csv[1].startswith('psnr,19,')


def test_seeds_independent_of_batching():
  a = ev.sample_seed(0, 2900, 1)
  assert np.array_equal(a, ev.sample_seed(0, 2900, 1))
  assert not np.array_equal(a, ev.sample_seed(0, 2900, 0)) and not np.array_equal(a, ev.sample_seed(1, 2900, 1))
  assert ev.host_scenes(list('abcde'), 1, 2) == ['b', 'd']


def test_media_writers(tmp_path):
  frames = np.random.default_rng(0).random((3, 16, 24, 3)).astype(np.float32)
  g = media.gallery_frames([('input', frames), ('sample 1', frames)])
  assert g.shape == (3, 16 + 14, 48, 3) and g.dtype == np.uint8
  media.write_mp4(os.path.join(tmp_path, 'g.mp4'), g, fps=4)
  media.write_gif(os.path.join(tmp_path, 'g.gif'), g, fps=4)
  back = media.read_frames(os.path.join(tmp_path, 'g.mp4'), [0, 2])
  assert back.shape[0] == 2 and back.shape[1] >= 30
  assert not [f for f in os.listdir(tmp_path) if f.startswith('.tmp')]
