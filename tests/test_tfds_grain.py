"""TFDS (ArrayRecord, no TensorFlow) → Grain pipeline: §4.10 batches, determinism, sharding, save/restore."""

import os
import sys

import numpy as np
import pytest

from data_pipelines import input_pipeline, kubric4d, pointcloud_store, tfds_builders
from tests.fixtures_data import kubric_root  # noqa: F401  (session fixture)


@pytest.fixture(scope='session')
def kubric_tfds(kubric_root, tmp_path_factory):  # noqa: F811
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  tfds_builders.build('kubric_4d', data_dir=data_dir, config='tiny', manual_dir=kubric_root)
  return data_dir


def tiny_cfg(data_dir, **kw):
  cfg = input_pipeline.data_config('tiny')
  cfg.dataset, cfg.builder_config, cfg.data_dir = 'kubric_4d', 'tiny', data_dir
  cfg.height, cfg.width, cfg.render_height, cfg.render_width = 16, 24, 28, 42
  cfg.batch_size, cfg.shard_index, cfg.shard_count, cfg.num_threads = 2, 0, 1, 1
  for k, v in kw.items():
    cfg[k] = v
  return cfg


def _take(it, n):
  return [next(it) for _ in range(n)]


def _assert_batches_equal(a, b):
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_tfds_records_without_tensorflow(kubric_tfds, kubric_root):  # noqa: F811
  with pytest.raises(ImportError):
    import tensorflow  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  assert 'tensorflow' not in sys.modules
  builder = tfds_builders.get_builder('kubric_4d', data_dir=kubric_tfds, config='tiny')
  index = tfds_builders.frame_index(builder, 'train')
  assert [(i, n, len(f), p) for i, n, f, p in index] == [(0, 'scn00000', 6, 0), (1, 'scn00001', 6, 6),
                                                        (2, 'scn00002', 6, 12)]
  rec = builder.as_data_source(split='train')[6 + 4]
  assert int(rec['id']) == 1004 and int(rec['frame']) == 4
  scene = kubric4d.KubricScene(kubric_root, 1)
  np.testing.assert_array_equal(rec['rgb'][2], scene.rgb(2, 4))
  np.testing.assert_allclose(rec['extrinsics'][3], scene.extrinsics(3)[4], atol=1e-6)
  # Stored depth is planar (ray depth corrected as §4.4), so unprojection = the point-cloud store's xyz.
  pcl = pointcloud_store.build_frame_pointcloud(scene, 4)
  from gcd_jax.geometry import pointcloud  # pylint: disable=g-import-not-at-top
  pts = pointcloud.unproject_depth(rec['depth'][1], rec['intrinsics'][1], rec['extrinsics'][1])
  np.testing.assert_allclose(pts, pcl['xyz'][1].astype(np.float64), atol=0.02)  # float16 storage
  # The pipeline's batched JAX unprojection (speed) equals the geometry reference, float32 accuracy.
  data = {'depth': rec['depth'][None], 'intrinsics': rec['intrinsics'], 'extrinsics': rec['extrinsics'][None],
          'rgb': rec['rgb'][None]}
  xyz, rgb = input_pipeline.clip_points(data)
  np.testing.assert_allclose(np.asarray(xyz)[0, 24 * 36:2 * 24 * 36], pts, atol=2e-5 * 25)
  np.testing.assert_array_equal(rgb[0, 24 * 36:2 * 24 * 36], rec['rgb'][1].reshape(-1, 3))


def test_batch_matches_spec(kubric_tfds):
  cfg = tiny_cfg(kubric_tfds)
  (b,) = _take(input_pipeline.make_iterator(cfg), 1)
  bs, t, h, w = 2, 4, 16, 24
  for key in ('jpg', 'cond_frames_without_noise', 'cond_frames'):
    assert b[key].shape == (bs, t, h, w, 3) and b[key].dtype == np.float32, key
  assert b['jpg'].min() >= -1 and b['jpg'].max() <= 1 and b['jpg'].std() > 0.05
  assert b['cond_frames_without_noise'].min() >= -1 and b['cond_frames_without_noise'].max() <= 1
  noise = b['cond_frames'] - b['cond_frames_without_noise']
  assert abs(noise.std() - 0.02) < 0.002 and abs(noise.mean()) < 0.002  # cond_aug·N(0,1) (§1.3)
  for key, dtype in (('fps_id', np.int32), ('motion_bucket_id', np.int32), ('cond_aug', np.float32),
                     ('image_only_indicator', np.float32)):
    assert b[key].shape == (bs, t) and b[key].dtype == dtype, key
  assert np.all(b['image_only_indicator'] == 0) and np.all(b['cond_aug'] == np.float32(0.02))
  assert b['scaled_relative_angles'].shape == (bs, t, 3)
  assert b['scaled_relative_pose'].shape == (bs, t, 3, 4)
  # Gradual trajectory: frame 0 has the source pose (Δ = 0, relative pose = identity), §6.19.
  np.testing.assert_allclose(b['scaled_relative_angles'][:, 0], 0, atol=1e-6)
  np.testing.assert_allclose(b['scaled_relative_pose'][:, 0], np.tile(np.eye(4)[:3], (bs, 1, 1)), atol=1e-5)
  skip, start = b['frame_skip'], b['frame_start']
  assert b['frame_skip'].shape == (bs,) and b['clip_frames'].shape == (bs, t)
  for i in range(bs):
    expect = start[i] + skip[i] * np.arange(t)
    got = b['clip_frames'][i][::-1] if b['reverse'][i] else b['clip_frames'][i]
    np.testing.assert_array_equal(got, expect)
    assert np.all(b['fps_id'][i] == round(24 / skip[i]))  # §1.3 fps_id = round(24 / skip)
    assert np.all(b['motion_bucket_id'][i] == b['motion_bucket_id'][i, 0]) and 0 <= b['motion_bucket_id'][i, 0] <= 255
  assert np.all(b['dset'] == 1) and set(b['scene_idx']) <= {0, 1, 2}


def test_deterministic_given_seed(kubric_tfds):
  a = _take(input_pipeline.make_iterator(tiny_cfg(kubric_tfds, seed=3)), 2)
  b = _take(input_pipeline.make_iterator(tiny_cfg(kubric_tfds, seed=3, num_threads=2)), 2)
  _assert_batches_equal(a, b)
  c = _take(input_pipeline.make_iterator(tiny_cfg(kubric_tfds, seed=4)), 1)
  assert not np.array_equal(a[0]['cond_frames'], c[0]['cond_frames'])


def test_iterator_save_restore_exact(kubric_tfds, tmp_path):
  import grain  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  cfg = tiny_cfg(kubric_tfds, seed=1)
  it = input_pipeline.make_iterator(cfg)
  _take(it, 2)
  state = it.get_state()
  mngr = ocp.CheckpointManager(str(tmp_path / 'ckpt'), item_names=('data',),
                               item_handlers={'data': input_pipeline.checkpoint_handler()})
  mngr.save(2, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
  mngr.wait_until_finished()
  expected = _take(it, 2)
  fresh = input_pipeline.make_iterator(cfg)
  fresh.set_state(state)
  _assert_batches_equal(_take(fresh, 2), expected)
  restored = input_pipeline.make_iterator(cfg)
  mngr.restore(2, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(restored)))
  _assert_batches_equal(_take(restored, 2), expected)
  mngr.close()


def test_two_hosts_see_disjoint_data(kubric_tfds):
  assert input_pipeline.resolve_shard(tiny_cfg(kubric_tfds, shard_index=-1, shard_count=-1)) == (0, 1)  # 1 process
  seen = []
  for shard in (0, 1):
    cfg = tiny_cfg(kubric_tfds, shard_index=shard, shard_count=2, batch_size=1)
    ds = input_pipeline.make_dataset(cfg)
    seen.append([int(ds[i]['idx'][0]) for i in range(3)])
  assert seen == [[0, 2, 4], [1, 3, 5]]
  # Two epochs of 3 scenes = 6 global examples: each scene appears once per epoch across both hosts.
  maker = input_pipeline.make_dataset(tiny_cfg(kubric_tfds, batch_size=1))
  del maker
  cfg = tiny_cfg(kubric_tfds)
  src = input_pipeline.make_source(cfg)
  m = input_pipeline.ExampleMaker(cfg, src)
  for epoch in range(2):
    assert sorted(m.scene_position(epoch * 3 + i) for i in range(3)) == [0, 1, 2]


def test_pointcloud_source_matches_tfds_source(kubric_tfds, kubric_root, tmp_path):  # noqa: F811
  for i in range(3):
    pointcloud_store.build_scene_store(kubric4d.KubricScene(kubric_root, i), str(tmp_path))
  cfg_t = tiny_cfg(kubric_tfds, seed=5)
  cfg_p = tiny_cfg(kubric_tfds, seed=5, source='pointcloud', pcl_root=str(tmp_path))
  a = input_pipeline.make_dataset(cfg_t)[0]
  b = input_pipeline.make_dataset(cfg_p)[0]
  for k in ('scene_idx', 'clip_frames', 'scaled_relative_angles', 'fps_id', 'motion_bucket_id'):
    np.testing.assert_array_equal(a[k], b[k])
  # Same clouds up to float16 storage of xyz (the reference's format): renders agree closely.
  diff = np.abs(a['jpg'] - b['jpg'])
  assert diff.mean() < 0.02, diff.mean()


@pytest.mark.parametrize('source', ['tfds', 'pointcloud'])
def test_host_and_jax_renderers_make_the_same_examples(kubric_tfds, kubric_root, tmp_path, source):  # noqa: F811
  """cfg.renderer 'host' (render_host, the default) and 'jax' (jitted render) on both sources: RGB-D
  records (unprojected by each) and the float16 point-cloud store."""
  kw = {}
  if source == 'pointcloud':
    for i in range(3):
      pointcloud_store.build_scene_store(kubric4d.KubricScene(kubric_root, i), str(tmp_path))
    kw = {'source': 'pointcloud', 'pcl_root': str(tmp_path)}
  host, jax_ = (input_pipeline.make_dataset(tiny_cfg(kubric_tfds, seed=3, renderer=r, **kw))[1]
                for r in ('host', 'jax'))
  assert host.keys() == jax_.keys()
  for k in host:
    if host[k].dtype.kind == 'f':  # float32 rounding (unprojection, projection) × the soft z-buffer slope
      np.testing.assert_allclose(host[k], jax_[k], atol=3e-5, err_msg=k)
    else:
      np.testing.assert_array_equal(host[k], jax_[k], err_msg=k)
  assert host['jpg'].std() > 0.05


def test_worker_processes_match_in_process(kubric_tfds):
  cfg = tiny_cfg(kubric_tfds, seed=2)
  expected = _take(input_pipeline.make_iterator(cfg), 2)
  cfg.num_workers = 1
  it = input_pipeline.make_iterator(cfg)
  got = _take(it, 2)
  _assert_batches_equal(got, expected)
  assert it.get_state() is not None


def test_data_command_show(kubric_tfds, kubric_root, tmp_path):  # noqa: F811
  from gcd_jax.cli import main  # pylint: disable=g-import-not-at-top
  out = str(tmp_path / 'preview.mp4')
  rc = main(['data', 'show', 'kubric_4d', '--data-dir', kubric_tfds, '--config', 'tiny', '--out', out,
             '--preset', 'tiny,height=32,width=48,render_height=35,render_width=52'])
  assert rc == 0 and os.path.getsize(out) > 0
  from PIL import Image  # pylint: disable=g-import-not-at-top
  grid = np.asarray(Image.open(str(tmp_path / 'preview.png')))
  assert grid.shape == (64, 4 * 48 + 64, 3)
  rc = main(['data', 'show', 'kubric_4d', '--data-dir', str(tmp_path / 'nowhere'), '--config', 'tiny',
             '--out', out])
  assert rc == 1


@pytest.fixture(scope='module')
def pardom_tfds(tmp_path_factory):
  from data_pipelines import splits  # pylint: disable=g-import-not-at-top
  from tests.fixtures_data import write_pardom_fixture  # pylint: disable=g-import-not-at-top
  tmp_path = tmp_path_factory.mktemp('pd_tfds')
  raw = str(tmp_path / 'pd')
  for i in (1, 2):
    write_pardom_fixture(raw, i, num_frames=10, height=24, width=32)
  splits.write_pardom_split(os.path.join(raw, 'pardom_datasplit.json'), ['scene_000001', 'scene_000002'],
                            ['scene_000002'], ['scene_000001'])
  data_dir = str(tmp_path / 'tfds')
  tfds_builders.build('pardom_4d', data_dir=data_dir, config='tiny', manual_dir=raw)
  return raw, data_dir


def test_pardom_pipeline(pardom_tfds):
  raw, data_dir = pardom_tfds
  cfg = tiny_cfg(data_dir, dataset='pardom_4d', trajectory='pardom_gradual', batch_size=1)
  ex = input_pipeline.make_dataset(cfg)[0]
  assert np.all(ex['dset'] == 2) and np.all(ex['motion_bucket_id'] == 127)  # §4.6
  skip = int(ex['frame_skip'][0])
  assert skip in (1, 2) and np.all(ex['fps_id'] == round(10 / skip)) and np.all(ex['scaled_relative_angles'] == 0)
  assert int(ex['src_view_idx'][0]) == 3  # yaw-0 in the sorted camera list of the fixture
  # Input = the real yaw-0 frames (4:3 → centre crop to 3:2 → resize), target frame 0 = ego-forward camera.
  np.testing.assert_allclose(ex['src_camera'][0, 0, :3, 3], (1.6, 0, 1.55))
  np.testing.assert_allclose(ex['dst_camera'][0, -1, :3, 3], (-8, 0, 8))
  assert ex['jpg'].shape == (1, 4, 16, 24, 3) and ex['cond_frames_without_noise'].min() >= -1
  # Input video = yaw-0 RGB: 32×24 (4:3) → centre crop 32×21 (3:2) → bilinear 24×16.
  import jax  # pylint: disable=g-import-not-at-top
  from data_pipelines import pardom4d  # pylint: disable=g-import-not-at-top
  scene = pardom4d.PardomScene(raw, int(ex['scene_idx'][0]))
  frames = np.stack([scene.rgb('yaw-0', int(t)) for t in ex['clip_frames'][0]])[:, 1:22].astype(np.float32) / 255
  expect = np.asarray(jax.image.resize(frames, (4, 16, 24, 3), 'linear', antialias=False)) * 2 - 1
  np.testing.assert_allclose(ex['cond_frames_without_noise'][0], expect, atol=1e-6)


# Fixture ontology (tests/fixtures_data.py): 0 sky, 1 floor, 2 sphere; the sphere's colour is PD's Pedestrian.
FIXTURE_PALETTE = np.array([(10, 20, 30), (128, 64, 128), (220, 20, 60)], np.float32) / 255.0


def test_pardom_semantic_target(pardom_tfds):
  """output_modality=semantic (reference `segm`): same clip and RGB input, target = palette[class id] rendered."""
  from gcd_jax.diffusion import config as diff_config, loss as loss_lib  # pylint: disable=g-import-not-at-top
  _, data_dir = pardom_tfds
  builder = tfds_builders.get_builder('pardom_4d', data_dir=data_dir, config='tiny')
  palette = tfds_builders.semantic_palette(builder)
  np.testing.assert_array_equal(palette[:3], FIXTURE_PALETTE * 255)
  assert palette.shape == (256, 3) and not palette[3:].any()
  kw = dict(dataset='pardom_4d', trajectory='pardom_gradual', batch_size=1)
  rgb_ds = input_pipeline.make_dataset(tiny_cfg(data_dir, **kw))
  sem_ds = input_pipeline.make_dataset(tiny_cfg(data_dir, output_modality='semantic', **kw))
  for i in range(2):
    ex_rgb, ex = rgb_ds[i], sem_ds[i]
    for key in ('cond_frames_without_noise', 'cond_frames', 'clip_frames', 'dst_camera', 'fps_id'):
      np.testing.assert_array_equal(ex[key], ex_rgb[key], err_msg=key)  # same clip, cameras, RGB input
    # Every pixel of the rendered target is a blend of palette colours; most (away from class edges and
    # holes) are a palette colour exactly; floor and (pedestrian-coloured) sphere both appear.
    jpg01 = (ex['jpg'][0] + 1) / 2
    dist = np.abs(jpg01[..., None, :] - FIXTURE_PALETTE).max(-1)  # [T, H, W, 3 classes]
    near = dist < 0.02
    assert np.mean(near.any(-1)) > 0.5 and near[..., 1].any() and near[..., 2].any(), near.mean((0, 1, 2))
    assert np.abs(ex['jpg'] - ex_rgb['jpg']).max() > 0.3
    # It is the §4.8 render of the clip's clouds coloured by class (not a re-colouring of the RGB render).
    src = input_pipeline.TfdsSceneSource(data_dir, 'pardom_4d', 'tiny', 'train')
    pos = [p for p in range(len(src)) if src.scene(p)[0] == int(ex['scene_idx'][0])][0]
    data = src.load_clip(pos, ex['clip_frames'][0], with_segm=True)
    colors = input_pipeline.semantic_point_colors(dict(data, semantic_palette=palette))
    xyz, _ = input_pipeline.clip_points(data)
    cfg = tiny_cfg(data_dir, **kw)
    k = input_pipeline.render_intrinsics(data['intrinsics'][input_pipeline.PD_INTRINSICS_VIEW], (32, 24), (28, 42))
    want = input_pipeline.render_clip(xyz, colors, k, ex['dst_camera'][:1], cfg)[0]
    np.testing.assert_allclose(ex['jpg'][0], want, atol=1e-6)
  # The PD semantic loss re-weighting finds the Pedestrian-coloured sphere in the semantic target (§2.3.1).
  cfg_loss = diff_config.diffusion_config('semantic')
  mask = loss_lib.pd_class_weight_mask(np.asarray(sem_ds[0]['jpg'][0]), (2, 3), cfg_loss)
  assert float(np.max(mask)) > 0 and float(np.max(mask)) <= 6.0 + 1e-6  # person weight 7 → (7 − 1)
  # (The fixture's red RGB sphere is close to the Pedestrian colour too, but covers fewer latent cells.)
  rgb_mask = loss_lib.pd_class_weight_mask(np.asarray(rgb_ds[0]['jpg'][0]), (2, 3), cfg_loss)
  assert float(np.sum(mask)) > float(np.sum(rgb_mask))


def test_pardom_semantic_modal_time_and_errors(pardom_tfds, kubric_tfds):
  _, data_dir = pardom_tfds
  kw = dict(dataset='pardom_4d', trajectory='pardom_gradual', batch_size=1)
  rgb = input_pipeline.make_dataset(tiny_cfg(data_dir, **kw))[0]['jpg'][0]
  sem = input_pipeline.make_dataset(tiny_cfg(data_dir, output_modality='semantic', **kw))[0]['jpg'][0]
  mix = input_pipeline.make_dataset(tiny_cfg(data_dir, output_modality='semantic', modal_time=2, **kw))[0]['jpg'][0]
  np.testing.assert_allclose(mix[0], rgb[0], atol=1e-6)  # frame 0 stays RGB
  np.testing.assert_allclose(mix[1], 0.5 * rgb[1] + 0.5 * sem[1], atol=1e-6)
  np.testing.assert_allclose(mix[2:], sem[2:], atol=1e-6)
  with pytest.raises(ValueError, match='ParallelDomain-4D class labels'):
    input_pipeline.make_dataset(tiny_cfg(kubric_tfds, output_modality='semantic'))
  with pytest.raises(ValueError, match='choose "rgb" or "semantic"'):
    input_pipeline.make_dataset(tiny_cfg(data_dir, output_modality='segmentation', **kw))


def test_pardom_semantic_pointcloud_store(pardom_tfds, tmp_path):
  """The point-cloud store carries class ids + palette; its semantic clouds equal the TFDS source's."""
  from data_pipelines import pardom4d  # pylint: disable=g-import-not-at-top
  raw, data_dir = pardom_tfds
  pcl = str(tmp_path / 'pcl')
  pointcloud_store.build_scene_store(pardom4d.PardomScene(raw, 1), pcl, frames=range(6))
  store_src = input_pipeline.PointCloudSceneSource(pcl, dset=tfds_builders.DSET_PARDOM)
  tfds_src = input_pipeline.TfdsSceneSource(data_dir, 'pardom_4d', 'tiny', 'train')
  np.testing.assert_array_equal(store_src.semantic_palette, tfds_src.semantic_palette)
  frames = [0, 2, 4, 5]
  a, b = store_src.load_clip(0, frames, with_segm=True), tfds_src.load_clip(0, frames, with_segm=True)
  a['semantic_palette'] = b['semantic_palette'] = tfds_src.semantic_palette
  np.testing.assert_array_equal(input_pipeline.semantic_point_colors(a), input_pipeline.semantic_point_colors(b))
  assert set(np.unique(a['segm'])) == {0, 1, 2}


def test_data_command_build(kubric_root, tmp_path, capsys):  # noqa: F811
  from gcd_jax.cli import main  # pylint: disable=g-import-not-at-top
  data_dir, pcl = str(tmp_path / 'tfds'), str(tmp_path / 'pcl')
  rc = main(['data', 'build', 'kubric_4d', '--data-dir', data_dir, '--config', 'tiny', '--manual-dir', kubric_root,
             '--point-clouds', pcl])
  assert rc == 0
  assert 'kubric_4d/tiny train: 3 scenes, 18 frames' in capsys.readouterr().out
  assert sorted(os.listdir(pcl)) == ['scn00000', 'scn00001', 'scn00002']
  assert len(os.listdir(os.path.join(pcl, 'scn00001'))) == 6 + 1  # 6 frames + cameras.npz
  rc = main(['data', 'build', 'kubric_4d', '--data-dir', str(tmp_path / 'tfds2'), '--config', 'tiny',
             '--manual-dir', str(tmp_path / 'missing')])
  assert rc == 2 and '--manual-dir' in capsys.readouterr().err  # a usage error: the folder the user named


def test_procedural_builder_end_to_end(tmp_path):
  """procedural_4d: generator → Kubric layout cache → TFDS → Grain, no TensorFlow anywhere."""
  data_dir = str(tmp_path / 'tfds')
  builder = tfds_builders.build('procedural_4d', data_dir=data_dir, config='tiny', num_scenes=3)
  meta = builder.info.metadata['scenes']
  assert {k: [n for _, n, _ in v] for k, v in meta.items()} == {
      'train': ['scn00000'], 'val': ['scn00001'], 'test': ['scn00002']}
  assert len(meta['train'][0][2]) == 12  # the 'tiny' generator preset: 12 frames
  rec = builder.as_data_source(split='val')[5]
  assert rec['rgb'].shape == (16, 64, 96, 3) and rec['depth'].shape == (16, 64, 96)
  assert int(rec['id']) == tfds_builders.record_id(1, 5) and rec['split'] == b'val'
  cfg = input_pipeline.data_config('tiny')
  cfg.update(dict(data_dir=data_dir, shard_index=0, shard_count=1, batch_size=1))
  (b,) = _take(input_pipeline.make_iterator(cfg), 1)
  assert b['jpg'].shape == (1, 4, 64, 96, 3) and set(b['fps_id'][0]) <= {24, 12, 8}
  assert b['jpg'].std() > 0.1 and 'tensorflow' not in sys.modules
