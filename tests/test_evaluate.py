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


def test_sample_mean_scored_beside_the_samples():
  """Several samples per scene: their per-pixel mean is scored as one more video (a point estimate), with its
  own row and margin column in the baseline table; one sample adds neither."""
  rng = np.random.default_rng(0)
  gt = rng.uniform(0.25, 0.75, (3, 8, 8, 3)).astype(np.float32)
  err = np.where(rng.random(gt.shape) < 0.5, -0.1, 0.1).astype(np.float32)
  samples = np.stack([gt + err, gt - err / 2])  # 20 dB and 26.02 dB; their mean is gt + err/4: 32.04 dB
  out = ev.scene_metrics(samples, gt, None, input01=gt[::-1])
  np.testing.assert_allclose(out['psnr'], [[20.0] * 3, [26.0206] * 3], atol=1e-3)
  assert out['psnr_samplemean'].shape == (1, 3) and out['ssim_samplemean'].shape == (1, 3)
  np.testing.assert_allclose(out['psnr_samplemean'], [[32.0412] * 3], atol=1e-3)
  assert 'psnr_samplemean' not in ev.scene_metrics(samples[:1], gt, None, input01=gt[::-1])

  row = lambda v: {'mean': v, 'std': 0.0, 'n': 1}  # noqa: E731
  table = {k: row(v) for k, v in dict(psnr=20.0, ssim=0.5, psnr_from1=19.0, ssim_from1=0.4, psnr_copy=40.0,
                                       ssim_copy=0.6, psnr_copy_from1=18.0, ssim_copy_from1=0.45).items()}
  assert 'sample mean' not in '\n'.join(ev.baseline_table(table))
  table.update(psnr_samplemean=row(21.5), ssim_samplemean=row(0.6), psnr_samplemean_from1=row(20.5),
               ssim_samplemean_from1=row(0.5))
  lines = ev.baseline_table(table)
  assert lines[0].endswith('| sample mean − it, frames 1+ (dB) |') and lines[3].startswith('| per-pixel mean')
  assert lines[4].startswith('| copy the input video |') and lines[4].endswith('| +1.00 | +2.50 |')


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


# -------------------------------------------------------------------------------------- end to end


def _evaluate(ckpt, data_dir, out, *extra):
  from gcd_jax import cli
  return cli.main(['evaluate', '--config', 'tiny', '--checkpoint', ckpt, '--data', data_preset(data_dir),
                   '--split', 'test', '--num-samples', '2', '--steps', '2', '--seed', '7', '--batch-size', '2',
                   '--no-progress', '--out', out, *extra])


def _progress(out):
  with open(os.path.join(out, 'progress_host0.json')) as f:
    return json.load(f)


def _frames(out, scene):
  with open(os.path.join(out, 'scenes', scene, 'metrics.json')) as f:
    return json.load(f)['frame']


@pytest.mark.slow
def test_evaluate_end_to_end_resume_and_seed(eval_tfds, tiny_checkpoint, tmp_path, capsys):  # noqa: F811
  out_a, out_b = os.path.join(tmp_path, 'a'), os.path.join(tmp_path, 'b')
  # Interrupted run: one scene only.
  assert _evaluate(tiny_checkpoint, eval_tfds, out_a, '--max-scenes', '1') == 0
  assert _progress(out_a)['computed'] == ['scn02900']
  first = os.path.join(out_a, 'scenes', 'scn02900', 'metrics.json')
  mtime = os.stat(first).st_mtime_ns
  # Resume: the finished scene is skipped (file untouched), the other one computed.
  assert _evaluate(tiny_checkpoint, eval_tfds, out_a) == 0
  assert _progress(out_a) ['computed'] == ['scn02901'] and _progress(out_a)['skipped'] == ['scn02900']
  assert os.stat(first).st_mtime_ns == mtime
  for scene in ('scn02900', 'scn02901'):
    for f in ('gallery.mp4', 'gallery.gif', 'metrics.json'):
      assert os.path.getsize(os.path.join(out_a, 'scenes', scene, f)) > 0
  for f in ('results.md', 'results.csv', 'results.json', 'curves_psnr.png', 'curves_ssim.png', 'controls.json'):
    assert os.path.getsize(os.path.join(out_a, f)) > 0
  md = open(os.path.join(out_a, 'results.md')).read()
  assert '2 scenes' in md and '| psnr |' in md and '| diversity_occ |' in md
  frames = _frames(out_a, 'scn02900')
  assert np.asarray(frames['psnr']).shape == (2, NUM_FRAMES)
  assert np.asarray(frames['psnr_samplemean']).shape == (1, NUM_FRAMES)  # 2 samples: their mean is scored too
  assert '| per-pixel mean of each scene' in md
  # Gradual trajectory: frame 0 is the source pose, so nothing is occluded there (NaN → null).
  assert frames['psnr_occ'][0][0] is None and frames['psnr_vis'][0][0] is not None
  # A second run with the same seed, in one go (other batching), agrees exactly.
  assert _evaluate(tiny_checkpoint, eval_tfds, out_b) == 0
  assert _progress(out_b)['computed'] == ['scn02900', 'scn02901']
  for scene in ('scn02900', 'scn02901'):
    assert _frames(out_a, scene) == _frames(out_b, scene)
  assert open(os.path.join(out_a, 'results.csv')).read() == open(os.path.join(out_b, 'results.csv')).read()
  # Other settings into the same folder: refused before any compute.
  capsys.readouterr()
  assert _evaluate(tiny_checkpoint, eval_tfds, out_a, '--steps', '3') == 1
  assert 'other settings' in capsys.readouterr().err


def _sample(ckpt, inp, out, *extra):
  from gcd_jax import cli
  return cli.main(['sample', '--checkpoint', ckpt, '--config', 'tiny', '--input', inp, '--out', out,
                   '--num-frames', str(NUM_FRAMES), '--frame-width', str(HW[1]), '--frame-height', str(HW[0]),
                   '--steps', '2', '--num-samples', '2', '--azimuth', '40', '--elevation', '10',
                   '--no-progress', *extra])


@pytest.mark.slow
def test_sample_video_folder_and_bad_inputs(tiny_checkpoint, tmp_path, capsys):  # noqa: F811
  from PIL import Image
  video = write_test_video(os.path.join(tmp_path, 'clip.mp4'), num_frames=12)
  out = os.path.join(tmp_path, 'out_video')
  assert _sample(tiny_checkpoint, video, out, '--frame-stride', '3') == 0
  for f in ('input.mp4', 'sample_0.mp4', 'sample_1.mp4', 'side_by_side.mp4', 'trajectory.png', 'info.json'):
    assert os.path.getsize(os.path.join(out, f)) > 0, f
  info = json.load(open(os.path.join(out, 'info.json')))
  assert info['clip_frames'] == [0, 3, 6, 9]
  # motion bucket synced with the camera motion: round(255·‖(40, 10)‖/‖(90, 30)‖) (§1.3)
  assert info['motion_bucket_id'] == round(255 * np.hypot(40, 10) / np.hypot(90, 30))
  side = media.read_frames(os.path.join(out, 'side_by_side.mp4'), [0])
  assert side.shape[2] >= 3 * HW[1]
  # An image folder.
  folder = os.path.join(tmp_path, 'frames')
  os.makedirs(folder)
  rng = np.random.default_rng(0)
  for i in range(5):
    Image.fromarray(rng.integers(0, 255, (20, 40, 3), dtype=np.uint8)).save(os.path.join(folder, f'{i:03d}.png'))
  out2 = os.path.join(tmp_path, 'out_folder')
  assert _sample(tiny_checkpoint, folder, out2, '--frame-stride', '1', '--direct') == 0
  assert os.path.getsize(os.path.join(out2, 'sample_1.mp4')) > 0
  # Bad inputs: clear errors, nothing written.
  capsys.readouterr()
  bad = os.path.join(tmp_path, 'out_bad')
  assert _sample(tiny_checkpoint, video, bad, '--frame-stride', '5') == 2  # usage errors: exit code 2
  assert '12 frames' in capsys.readouterr().err
  assert _sample(tiny_checkpoint, video, bad, '--frame-width', '30') == 2
  assert 'multiple of 4' in capsys.readouterr().err
  from gcd_jax import cli
  assert cli.main(['sample', '--checkpoint', tiny_checkpoint, '--config', 'tiny_svd', '--input', video,
                   '--out', bad]) == 2
  assert 'differs from --config' in capsys.readouterr().err
  assert not os.path.exists(bad)


@pytest.fixture(scope='module')
def pardom_eval_tfds(tmp_path_factory):
  """A PD-4D layout copy (scenes 1 train, 3 test; fixture ontology) and its TFDS build → (raw, data_dir)."""
  from data_pipelines import splits, tfds_builders
  from tests.fixtures_data import write_pardom_fixture
  tmp_path = tmp_path_factory.mktemp('pd_eval')
  raw, data_dir = str(tmp_path / 'pd'), str(tmp_path / 'tfds')
  for i in (1, 3):
    write_pardom_fixture(raw, i, num_frames=10, height=24, width=32)
  splits.write_pardom_split(os.path.join(raw, 'pardom_datasplit.json'), ['scene_000001'], [], ['scene_000003'])
  tfds_builders.build('pardom_4d', data_dir=data_dir, config='tiny', manual_dir=raw)
  return raw, data_dir


def test_pardom_example_builder(pardom_eval_tfds):
  """ParallelDomain test examples: PD control format, real yaw-0 input, top-down GT, reproject from yaw-0."""
  from data_pipelines import input_pipeline
  from gcd_jax.geometry import trajectory
  _, data_dir = pardom_eval_tfds
  cfg = input_pipeline.data_config(f'tiny,dataset=pardom_4d,builder_config=tiny,data_dir={data_dir},split=test,'
                                   'height=16,width=24,render_height=28,render_width=42,trajectory=pardom_gradual')
  traj = trajectory.trajectory_config('pardom_gradual')
  traj.num_frames = cfg.num_frames
  ctrl = {'scene_000003': {'sample_00': {'frame_start': 1, 'frame_skip': 2, 'fps': 5}}}
  ex = ev.ExampleBuilder(cfg, traj, ctrl)('scene_000003')
  assert ex['input01'].shape == ex['gt01'].shape == ex['reproject01'].shape == (NUM_FRAMES, 16, 24, 3)
  assert np.all(ex['fps_id'] == 5) and np.all(ex['motion_bucket_id'] == 127)
  assert np.all(ex['scaled_relative_angles'] == 0)
  # The input is the data pipeline's PD input (real yaw-0 frames, centre crop, bilinear resize).
  src = input_pipeline.TfdsSceneSource(data_dir, 'pardom_4d', 'tiny', 'test')
  data = src.load_clip(0, [1, 3, 5, 7])
  want, _ = input_pipeline.render_pardom_views(data, {'dst_camera': np.tile(np.eye(4), (4, 1, 1))}, cfg)
  np.testing.assert_allclose(ex['input01'], np.clip((want + 1) / 2, 0, 1), atol=1e-6)
  occ = np.mean(np.sum(np.abs(ex['reproject01']), -1) <= 1e-7)
  assert 0.0 < occ < 1.0  # the yaw-0 view alone leaves holes in the top-down view


def test_pardom_semantic_example_builder_and_miou(pardom_eval_tfds):
  """Semantic PD checkpoints: GT = cloud rendered with ontology colours (as training), input still RGB;
  mIoU of the GT against itself is 1 and against the RGB render is lower."""
  from data_pipelines import input_pipeline
  from gcd_jax.evaluate import metrics
  from gcd_jax.geometry import trajectory
  raw, data_dir = pardom_eval_tfds
  cfg = input_pipeline.data_config(f'tiny,dataset=pardom_4d,builder_config=tiny,data_dir={data_dir},split=test,'
                                   'height=16,width=24,render_height=28,render_width=42,trajectory=pardom_gradual,'
                                   'output_modality=semantic')
  traj = trajectory.trajectory_config('pardom_gradual')
  traj.num_frames = cfg.num_frames
  ctrl = {'scene_000003': {'sample_00': {'frame_start': 1, 'frame_skip': 2, 'fps': 5}}}
  sem = ev.ExampleBuilder(cfg, traj, ctrl, semantic=True)('scene_000003')
  rgb = ev.ExampleBuilder(cfg, traj, ctrl)('scene_000003')
  np.testing.assert_array_equal(sem['input01'], rgb['input01'])
  # The GT equals the training pipeline's semantic target for the same clip and cameras.
  src = input_pipeline.TfdsSceneSource(data_dir, 'pardom_4d', 'tiny', 'test')
  data = dict(src.load_clip(0, [1, 3, 5, 7], with_segm=True), semantic_palette=src.semantic_palette)
  dst = trajectory.pardom_topdown_trajectory(4, trajectory.resolve_move_time(traj), traj.trajectory)['dst_c2w']
  _, want = input_pipeline.render_pardom_views(data, {'dst_camera': dst}, cfg)
  np.testing.assert_allclose(sem['gt01'], np.clip((want + 1) / 2, 0, 1), atol=1e-5)
  onto = os.path.join(raw, 'scene_000001', 'ontology', 'fdc593e7de5d680e0e82af9ca090e98a63d13a7e.json')
  palette, _, ignore = metrics.load_semantic_palette(onto)
  perfect = ev.scene_metrics(sem['gt01'][None], sem['gt01'], sem['reproject01'], palette=palette, ignore_index=ignore)
  wrong = ev.scene_metrics(rgb['gt01'][None], sem['gt01'], sem['reproject01'], palette=palette, ignore_index=ignore)
  assert float(perfect['miou_video'][0]) == 1.0
  assert float(wrong['miou_video'][0]) < 0.9


def test_sampling_memory_check_refuses_before_compiling_and_suggests_a_size():
  """The 384×256 default on the tiny model asked XLA for ~87 GB (spatial attention over 192×128 latent tokens):
  refused up front, with the estimate and a size that fits; the tiny model's own size passes."""
  import re  # pylint: disable=g-import-not-at-top
  from gcd_jax.models import presets as models  # pylint: disable=g-import-not-at-top
  from gcd_jax.evaluate import inference  # pylint: disable=g-import-not-at-top
  cfg = models.get_config('tiny')
  need = inference.sampling_memory_bytes(cfg, num_frames=3, width=384, height=256)
  assert 80e9 < need < 100e9, need
  with pytest.raises(inference.InputError, match=r'needs about 8\d\.\d GiB') as e:
    inference.check_fits(cfg, num_frames=3, width=384, height=256, multiple=4, available=8 << 30)
  w, h = map(int, re.search(r'--frame-width (\d+) --frame-height (\d+)', str(e.value)).groups())
  assert w % 4 == 0 and h % 4 == 0 and w < 384
  inference.check_fits(cfg, num_frames=3, width=w, height=h, multiple=4, available=8 << 30)
  inference.check_fits(cfg, num_frames=3, width=48, height=32, multiple=4, available=8 << 30)
  assert inference.default_frame_size(cfg, None) == (48, 32)
  assert inference.default_frame_size(models.get_config('gcd'), None) == (384, 256)
