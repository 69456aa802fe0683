"""TFDS builders (ArrayRecord, no TensorFlow) for the procedural dataset, Kubric-4D and ParallelDomain-4D.

One record per (scene, frame) holding everything needed to render that frame from any camera: the
RGB-D views of all V static cameras plus their cameras (docs/reference.md §4.4's merged point cloud is the
unprojection of exactly these, done at read time — float16 planar depth at 2 B/pixel is a third of
float16 xyz at 6 B/pixel and keeps the views for the PD input video).

Features (docs/dependencies.md: `Tensor` features only — `Video`/`Image` need TensorFlow):
  id           int64   scene_idx·1000 + frame (TFDS may reorder records; this names the record)
  scene_name   Text    'scn00042' / 'scene_000042'
  scene_idx    int32
  frame        int32   frame index t within the scene
  split        Text
  dset         int32   1 = Kubric-like (procedural, Kubric-4D), 2 = ParallelDomain (§4.10)
  rgb          uint8   [V, H, W, 3] (raw bytes, uncompressed: see below)
  depth        float16 [V, H, W] planar camera z in metres (Kubric ray depth corrected as §4.4) (raw bytes).
                       float16 like the reference's stored xyz (§4.4): ≤ 0.05 % relative error, a third of
                       float16 xyz
  segm         uint8   [V, H, W] instance id (Kubric) / semantic class id (PD) (ZLIB; the training pipeline
                       does not decode it)

Since version 1.2.0 rgb and depth are stored uncompressed, and the ArrayRecord files are written
uncompressed (`_uncompressed_array_records`; TFDS would apply ArrayRecord's default compression): inflating
them was ~45 ms per Kubric-size record, 0.6–1.0 s of every 14-frame training example — more than rendering
it (`gcd_jax.geometry.render_host`). Reading a record is now a copy. The cost is disk: ~18 MB per
Kubric-size record (576×384×16), ~2–3× the ZLIB size on real Kubric-4D (procedural frames compress more).
  intrinsics   float32 [V, 3, 3] pixels
  extrinsics   float32 [V, 4, 4] camera-to-world (right, down, forward), §4.9

Records are written in generation order (`disable_shuffling=True`), scene by scene, frame by frame, and
`info.metadata['scenes'][split]` lists `[scene_idx, scene_name, [frames...]]` in that order, so that the
record of (scene, frame) is found without reading the dataset (`frame_index`). Readers still check the
`id` field of every record they load.

ParallelDomain builds also store `info.metadata['semantic_palette']`: the ontology's class id → RGB
colour table [256, 3] (uint8 values), read once from scene_000000's ontology as the reference does
(`pardom_arbit.py` loads `semantic_id_rgb_map` from scene_000000 only; else the first scene that has
one). The semantic target of the `modality=semantic` models is the cloud coloured by
`palette[segm]` (`semantic_palette`, docs/reference.md §4.6).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import types

from array_record.python import array_record_module
import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.core import file_adapters
from tensorflow_datasets.core import shuffle as tfds_shuffle

from data_pipelines import kubric4d, pardom4d, splits
from data_pipelines.pointcloud_store import MAX_DEPTH
from gcd_jax.geometry import pointcloud

DSET_KUBRIC = 1
DSET_PARDOM = 2
_ZLIB = tfds.features.Encoding.ZLIB
_RAW = tfds.features.Encoding.BYTES  # the array's bytes as one bytes feature, no compression


@contextlib.contextmanager
def _uncompressed_array_records():
  """Make TFDS write ArrayRecord files uncompressed while the block runs. TFDS 4.9.10 hardcodes the
  writer options to 'group_size:1' (ArrayRecord's default compression), with no setting to change them;
  this replaces `ArrayRecordFileAdapter.write_examples` by the same loop with 'group_size:1,uncompressed'.
  Readers need nothing: ArrayRecord files record their own compression."""
  adapter = file_adapters.ArrayRecordFileAdapter
  original = adapter.__dict__['write_examples']

  def write_examples(cls, path, iterator):
    del cls
    writer = array_record_module.ArrayRecordWriter(os.fspath(path), 'group_size:1,uncompressed')
    for _, serialized_example in iterator:
      writer.write(serialized_example)
    writer.close()

  adapter.write_examples = classmethod(write_examples)
  old_tf = tfds_shuffle.tf
  tfds_shuffle.tf = _SHUFFLE_FILE_IO  # splits over 1 GB spill to disk without TensorFlow (see below)
  try:
    yield
  finally:
    adapter.write_examples = original
    tfds_shuffle.tf = old_tf


class _ResourceExhaustedError(OSError):
  pass


# TFDS's shuffler keeps a split in memory up to 1 GB, then spills buckets to temporary files through
# `tf.io.gfile` (tensorflow_datasets/core/shuffle.py: `_Bucket.add`, `read_values`, `del_file`), the one
# place where a TF-free build still needs TensorFlow. These are local files: plain Python I/O does the same.
_SHUFFLE_FILE_IO = types.SimpleNamespace(
    io=types.SimpleNamespace(gfile=types.SimpleNamespace(GFile=open, exists=os.path.exists, remove=os.remove)),
    errors=types.SimpleNamespace(ResourceExhaustedError=_ResourceExhaustedError))


def record_id(scene_idx: int, frame: int) -> int:
  return int(scene_idx) * 1000 + int(frame)


def _features() -> tfds.features.FeaturesDict:
  return tfds.features.FeaturesDict({
      'id': np.int64,
      'scene_name': tfds.features.Text(),
      'scene_idx': np.int32,
      'frame': np.int32,
      'split': tfds.features.Text(),
      'dset': np.int32,
      'rgb': tfds.features.Tensor(shape=(None, None, None, 3), dtype=np.uint8, encoding=_RAW),
      'depth': tfds.features.Tensor(shape=(None, None, None), dtype=np.float16, encoding=_RAW),
      'segm': tfds.features.Tensor(shape=(None, None, None), dtype=np.uint8, encoding=_ZLIB),
      'intrinsics': tfds.features.Tensor(shape=(None, 3, 3), dtype=np.float32),
      'extrinsics': tfds.features.Tensor(shape=(None, 4, 4), dtype=np.float32),
  })


def scene_frame_record(scene, frame: int, split: str) -> dict:
  """All views of one frame of a KubricScene / PardomScene as a record dict (see module docstring)."""
  is_kubric = isinstance(scene, kubric4d.KubricScene)
  rgb, depth, segm, intr, extr = [], [], [], [], []
  for v in range(scene.num_views):
    k = scene.intrinsics(v)
    e = scene.extrinsics(v)
    d = scene.depth(v, frame)
    if is_kubric:
      d = pointcloud.correct_depth_ball_plane(d, k)
      segm.append(scene.segmentation(v, frame)[0])
    else:
      d = np.minimum(d, MAX_DEPTH)
      segm.append(scene.semantic(v, frame))
    rgb.append(scene.rgb(v, frame))
    depth.append(d)
    intr.append(k)
    extr.append(e[frame] if e.ndim == 3 else e)
  return {
      'id': record_id(scene.scene_idx, frame), 'scene_name': scene.name, 'scene_idx': scene.scene_idx,
      'frame': frame, 'split': split, 'dset': DSET_KUBRIC if is_kubric else DSET_PARDOM,
      'rgb': np.stack(rgb), 'depth': np.stack(depth).astype(np.float16), 'segm': np.stack(segm),
      'intrinsics': np.stack(intr).astype(np.float32), 'extrinsics': np.stack(extr).astype(np.float32),
  }


class _SceneFramesBuilder(tfds.core.GeneratorBasedBuilder):
  """Shared writer: subclasses list the scenes of each split (`_scenes(split)` → readers)."""

  VERSION = tfds.core.Version('1.2.0')
  RELEASE_NOTES = {'1.0.0': 'Per-(scene, frame) RGB-D views + cameras.',
                   '1.1.0': 'Planar depth stored as float16 (was float32).',
                   '1.2.0': 'rgb and depth stored uncompressed, in uncompressed ArrayRecord files (reading '
                            'was dominated by inflating them).'}

  def download_and_prepare(self, *args, **kwargs):
    with _uncompressed_array_records():
      return super().download_and_prepare(*args, **kwargs)

  # TFDS prints "Downloading and preparing dataset Unknown size ..." for every build; nothing is downloaded.
  def _log_download_bytes(self) -> None:
    print(f'[data] building {self.name}/{self.builder_config.name} in {self.data_dir}', flush=True)

  def _log_download_done(self) -> None:
    print(f'[data] {self.name}/{self.builder_config.name} is ready in {self.data_dir}', flush=True)

  # No download URLs. Overriding `code_path` also keeps TFDS from probing package resources through
  # `importlib_resources`, which tensorflow-datasets 4.9.10 uses but does not install on Python 3.11.
  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls):
    return None

  def __init__(self, *, manual_dir: str | None = None, **kwargs):
    self._manual_dir = manual_dir
    super().__init__(**kwargs)

  def _require_manual_dir(self) -> str:
    if self._manual_dir is None or not os.path.isdir(self._manual_dir):
      raise FileNotFoundError(f'{self.name} reads a local copy: manual_dir {self._manual_dir!r} is not a folder. '
                              + self.MANUAL_DOWNLOAD_INSTRUCTIONS)
    return self._manual_dir

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(builder=self, description=__doc__, features=_features(),
                                 disable_shuffling=True, metadata=tfds.core.MetadataDict())

  def _split_names(self) -> tuple[str, ...]:
    return ('train', 'val', 'test')

  def _scenes(self, split: str) -> list:  # pragma: no cover - abstract
    raise NotImplementedError

  def _frames(self, scene) -> list[int]:
    frames = range(scene.num_frames)
    if hasattr(scene, 'frame_complete'):  # PD: skip frames with a missing view file (§4.4)
      frames = [t for t in frames if scene.frame_complete(t)]
    return list(frames)

  def _split_generators(self, dl_manager):
    del dl_manager
    index, gens = {}, {}
    for split in self._split_names():
      scenes = self._scenes(split)
      if not scenes:
        continue
      plan = [(s, self._frames(s)) for s in scenes]
      index[split] = [[s.scene_idx, s.name, list(f)] for s, f in plan]
      gens[split] = self._generate_examples(plan, split)
    if not gens:
      raise ValueError(f'{self.name}: no scenes found for any split; check the data location.')
    self.info.metadata['scenes'] = index
    self.info.metadata.update(self._extra_metadata())
    return gens

  def _extra_metadata(self) -> dict:
    return {}

  def _generate_examples(self, plan, split):
    for scene, frames in plan:
      for t in frames:
        yield f'{scene.name}_{t:05d}', scene_frame_record(scene, t, split)


# --------------------------------------------------------------------------------------------- Kubric-4D

@dataclasses.dataclass
class Kubric4dConfig(tfds.core.BuilderConfig):
  max_scenes_per_split: int | None = None  # cap (smoke runs); None = every scene present


class Kubric4d(_SceneFramesBuilder):
  """Kubric-4D from a local copy in the published layout (docs/reference.md §4.2); splits as §4.1."""

  name = 'kubric_4d'

  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      'Place (or symlink) the Kubric-4D scene folders scn00000..scn02999 (docs/reference.md §4.2) in manual_dir, '
      'e.g. `gcd-jax data build kubric_4d --manual-dir /data/kubric4d`.')
  BUILDER_CONFIGS = [Kubric4dConfig(name='full', description='All scenes present, splits 2800/100/100.'),
                     Kubric4dConfig(name='tiny', description='At most 3 scenes per split.',
                                    max_scenes_per_split=3)]

  def _scenes(self, split):
    root = self._require_manual_dir()
    present = set(kubric4d.list_scenes(root))
    names = [kubric4d.scene_name(i) for i in splits.kubric_split(split)]
    names = [n for n in names if n in present][:self.builder_config.max_scenes_per_split]
    return [kubric4d.KubricScene(root, n) for n in names]


# --------------------------------------------------------------------------------------- ParallelDomain-4D

@dataclasses.dataclass
class Pardom4dConfig(tfds.core.BuilderConfig):
  split_json: str = 'pardom_datasplit.json'  # relative to manual_dir unless absolute
  max_scenes_per_split: int | None = None


class Pardom4d(_SceneFramesBuilder):
  """ParallelDomain-4D from a local copy in the published layout (§4.3); splits from the split JSON."""

  name = 'pardom_4d'
  VERSION = tfds.core.Version('1.3.0')
  RELEASE_NOTES = {**_SceneFramesBuilder.RELEASE_NOTES,
                   '1.3.0': 'Semantic palette (ontology colours) in the metadata.'}

  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      'Place the ParallelDomain-4D scene_XXXXXX/ folders and the reference eval/list/pardom_datasplit.json '
      'in manual_dir (or set the config split_json to its absolute path).')
  BUILDER_CONFIGS = [Pardom4dConfig(name='full', description='Split JSON 1411/61/61.'),
                     Pardom4dConfig(name='tiny', description='At most 2 scenes per split.',
                                    max_scenes_per_split=2)]

  def _scenes(self, split):
    root = self._require_manual_dir()
    split_json = self.builder_config.split_json
    split_json = split_json if os.path.isabs(split_json) else os.path.join(root, split_json)
    present = set(pardom4d.list_scenes(root))
    names = [n for n in splits.load_pardom_split(split_json, split) if n in present]
    return [pardom4d.PardomScene(root, n) for n in names[:self.builder_config.max_scenes_per_split]]

  def _extra_metadata(self) -> dict:
    root = self._require_manual_dir()
    palette = pardom4d.find_palette(root)
    # No ontology: RGB training still works; semantic training then stops with a message naming the file.
    return {'semantic_palette': palette.tolist()} if palette is not None else {}


# ---------------------------------------------------------------------------------------------- procedural

@dataclasses.dataclass
class Procedural4dConfig(tfds.core.BuilderConfig):
  """Procedural scenes (gcd_jax.geometry.procedural), Kubric-4D's camera layout and on-disk format."""
  num_scenes: int = 60
  preset: str = 'small'  # gcd_jax.geometry.procedural preset name (tiny 64×96 / small / kubric 576×384)
  seed: int = 0
  overrides: tuple = ()  # extra (key, value) pairs applied to the generator config
  # Cap on generated/listed train scenes; val/test stay the full config's (same indices, same seeds), so a
  # capped build evaluates on exactly the held-out scenes of the uncapped one (`demo_eval` vs `demo`).
  max_train_scenes: int | None = None


class Procedural4d(_SceneFramesBuilder):
  """Synthetic 4D scenes generated on the fly (no download) and written in Kubric-4D's layout first."""

  name = 'procedural_4d'
  MANUAL_DOWNLOAD_INSTRUCTIONS = 'Optional: manual_dir = where the generated Kubric-layout scenes are cached.'

  BUILDER_CONFIGS = [
      Procedural4dConfig(name='tiny', description='6 scenes at 64×96 (tests, demo).', num_scenes=6, preset='tiny'),
      # The demo model's data (configs/demo.py): 300 scenes at 64×96, 12 frames; splits 280 / 10 / 10.
      Procedural4dConfig(name='demo', description='300 scenes at 64×96 (the demo model).', num_scenes=300,
                         preset='tiny'),
      # `gcd-jax demo` on a fresh machine: demo's 10 test scenes (identical) and its first 16 train scenes.
      Procedural4dConfig(name='demo_eval', description="demo's test/val scenes and 16 of its train scenes.",
                         num_scenes=300, preset='tiny', max_train_scenes=16),
      Procedural4dConfig(name='small', description='120 scenes at 256×384.', num_scenes=120, preset='small'),
      Procedural4dConfig(name='full', description='3000 scenes at Kubric resolution 576×384.',
                         num_scenes=3000, preset='kubric'),
  ]

  def __init__(self, *, num_scenes: int | None = None, **kwargs):
    super().__init__(**kwargs)
    self._num_scenes = num_scenes or self.builder_config.num_scenes

  def _split_generators(self, dl_manager):
    # Scenes are rendered once into a Kubric-layout cache (manual_dir, else <download_dir>/procedural_4d/<cfg>)
    # and then read back by the same reader as real Kubric-4D: the layout is tested end to end.
    self._root = self._manual_dir or os.path.join(os.fspath(dl_manager.download_dir), 'procedural_4d',
                                                  self.builder_config.name)
    wanted = sorted({i for split in self._split_names() for i in self._scene_indices(split)})
    generate_scenes(self._root, wanted, preset=self.builder_config.preset,
                    seed=self.builder_config.seed, overrides=dict(self.builder_config.overrides))
    return super()._split_generators(dl_manager)

  def _scene_indices(self, split) -> list[int]:
    indices = splits.procedural_split(split, self._num_scenes)
    cap = self.builder_config.max_train_scenes
    return indices[:cap] if split == 'train' and cap is not None else indices

  def _scenes(self, split):
    return [kubric4d.KubricScene(self._root, i) for i in self._scene_indices(split)]


def generate_scenes(root: str, scene_indices, *, preset: str = 'tiny', seed: int = 0, overrides=None):
  """Render procedural scenes into `root` in Kubric-4D's layout; skips scenes already complete there."""
  from gcd_jax.geometry import procedural  # pylint: disable=g-import-not-at-top
  os.makedirs(root, exist_ok=True)
  cfg = procedural.scene_config(preset, **(overrides or {}))
  for i in scene_indices:
    sdir = os.path.join(root, kubric4d.scene_name(i))
    if os.path.isdir(sdir):
      continue  # written atomically by the generator: a present folder is complete
    scene = procedural.generate_scene(seed * 1_000_003 + i, cfg)
    procedural.write_kubric_scene(scene, root, i)


NAMES = {'procedural_4d': Procedural4d, 'kubric_4d': Kubric4d, 'pardom_4d': Pardom4d}


def get_builder(name: str, *, data_dir: str, config: str | None = None, manual_dir: str | None = None,
                **kwargs) -> tfds.core.DatasetBuilder:
  """`get_builder('procedural_4d', data_dir=D, config='tiny')` (names: procedural_4d, kubric_4d, pardom_4d)."""
  if name not in NAMES:
    raise ValueError(f'unknown dataset {name!r}; choose one of {sorted(NAMES)}')
  cls = NAMES[name]
  return cls(data_dir=data_dir, config=config or 'tiny', file_format='array_record', manual_dir=manual_dir,
             **kwargs)


def build(name: str, *, data_dir: str, config: str | None = None, manual_dir: str | None = None,
          **kwargs) -> tfds.core.DatasetBuilder:
  """Build (idempotent: TFDS reuses a complete dataset) and return the builder."""
  builder = get_builder(name, data_dir=data_dir, config=config, manual_dir=manual_dir, **kwargs)
  builder.download_and_prepare(file_format='array_record')
  return builder


def semantic_palette(builder: tfds.core.DatasetBuilder) -> np.ndarray:
  """Class id → colour table [256, 3] uint8 stored by the ParallelDomain builder (see module docstring)."""
  meta = builder.info.metadata
  if meta is None or 'semantic_palette' not in meta:
    raise ValueError(
        f'{builder.name}/{builder.builder_config.name} has no semantic palette in its metadata: the dataset was '
        'built without an ontology/*.json (scene_000000/ontology/, docs/reference.md §4.3) or by an older version. '
        'Put the ontology in place and rebuild with `gcd-jax data build pardom_4d --manual-dir ...` to train or '
        'evaluate semantic (output_modality=semantic) models.')
  return np.asarray(meta['semantic_palette'], np.uint8).reshape(256, 3)


def frame_index(builder: tfds.core.DatasetBuilder, split: str) -> list[tuple[int, str, list[int], int]]:
  """[(scene_idx, scene_name, frames, first_record)] of `split` from the builder metadata."""
  meta = builder.info.metadata
  if meta is None or 'scenes' not in meta:
    raise ValueError(f'{builder.name}: dataset metadata lacks the scene index; rebuild it with this version.')
  if split not in meta['scenes']:
    raise ValueError(f'{builder.name}: split {split!r} not built (available: {sorted(meta["scenes"])})')
  out, pos = [], 0
  for scene_idx, name, frames in meta['scenes'][split]:
    out.append((int(scene_idx), str(name), [int(f) for f in frames], pos))
    pos += len(frames)
  return out
