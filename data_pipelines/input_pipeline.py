"""Grain input pipeline: GCD training examples rendered on the fly from point clouds (docs/reference.md §4.5–4.10).

Per example: pick a scene, sample a clip and a camera trajectory (seeded by (seed, epoch, index)), build
the merged point cloud of every clip frame, render the input (source) and target (destination) views
with the §4.8 renderer (cfg.renderer: 'host' = gcd_jax.geometry.render_host, compiled loops on this CPU
core, ~0.8 examples/s/core at Kubric density; 'jax' = the jitted gcd_jax.geometry.render, same result up
to float32 rounding), and return §4.10's dictionary — channels-last, batched to [B, T, ...]:

  jpg                        [B, T, H, W, 3] f32  target video in [-1, 1]
  cond_frames_without_noise  [B, T, H, W, 3] f32  input video in [-1, 1]
  cond_frames                [B, T, H, W, 3] f32  input + cond_aug·N(0, 1)
  fps_id, motion_bucket_id   [B, T] int32
  cond_aug                   [B, T] f32 (= 0.02)
  image_only_indicator       [B, T] f32 zeros
  scaled_relative_angles     [B, T, 3] f32 (Δaz rad, Δel rad, Δr m)
  scaled_relative_pose       [B, T, 3, 4] f32 (inv(RT_src)·RT_dst)[:3]
  dset [B] (1 Kubric-like, 2 PD), idx [B] int64 (global example index), scene_idx, frame_start, frame_skip,
  reverse [B] int32, clip_frames [B, T] int32, src_view_idx / dst_view_idx [B] int32 (PD; -1 otherwise),
  src_camera / dst_camera [B, T, 4, 4] f32 camera-to-world of the input / target views (previews, eval)

The dataset index is global: example i belongs to epoch i // num_scenes and, in that epoch, to the scene at
position i % num_scenes of a per-epoch permutation. Host s of S reads indices s, s+S, s+2S, ... (disjoint,
together covering everything). The Grain iterator state is just the next position, so save/restore is
exact; `checkpoint_handler()` plugs it into Orbax.

Build a training iterator (cfg.batch_size is the PER-HOST batch; shards default to the JAX processes):
  cfg = data_config('procedural')             # or 'kubric', 'pardom', 'tiny'; then override fields
  cfg.data_dir = ...; cfg.batch_size = global_batch // jax.process_count()
  it = make_iterator(cfg)                      # grain DatasetIterator; next(it) → batch dict (numpy)
  state = it.get_state(); ...; it.set_state(state)          # exact resume (a small JSON-able dict)
With Orbax (one JSON per process, written by grain.checkpoint.CheckpointHandler):
  mngr = ocp.CheckpointManager(dir, item_names=('state', 'data'),
                               item_handlers={'state': ocp.StandardCheckpointHandler(),
                                              'data': checkpoint_handler()})
  mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(tree),
                                          data=grain.checkpoint.CheckpointSave(it)))
  mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_tree),
                                             data=grain.checkpoint.CheckpointRestore(it)))
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys

import grain
import ml_collections
import numpy as np

from data_pipelines import tfds_builders

KUBRIC_FPS = 24
PARDOM_FPS = 10


# ------------------------------------------------------------------------------------------------ config

def data_config(preset: str = 'procedural') -> ml_collections.ConfigDict:
  """Data config presets: 'kubric' (Kubric-4D, §4.5), 'pardom' (§4.6), 'procedural' (no download, 256×384),
  'tiny' (64×96, 4 frames, for tests/demo). Append ',key=value' pairs to override (e.g. 'tiny,batch_size=4')."""
  name, *overrides = preset.split(',')
  c = ml_collections.ConfigDict()
  c.dataset = 'procedural_4d'      # procedural_4d | kubric_4d | pardom_4d (TFDS) ; see `source`
  c.builder_config = 'small'       # TFDS builder config (tiny / small / full)
  c.source = 'tfds'                # 'tfds' (RGB-D records) or 'pointcloud' (merged .npz/.pt store at pcl_root)
  c.data_dir = os.path.expanduser('~/tensorflow_datasets')
  c.manual_dir = ''                # Kubric-4D / PD raw layout, or procedural scene cache
  c.pcl_root = ''                  # point-cloud store root (source='pointcloud')
  c.split = 'train'
  c.height, c.width = 256, 384     # model resolution (§4.8 step 7)
  c.render_height, c.render_width = 280, 420  # render resolution (§4.8 step 1)
  c.num_frames = 14
  c.trajectory = 'kubric_gradual_max90'  # gcd_jax.geometry trajectory_config preset
  # Target modality (ParallelDomain only): 'rgb', or 'semantic' = the reference's `output_modality: segm`
  # (target = the cloud coloured by the ontology palette of each point's class id; input stays RGB).
  c.output_modality = 'rgb'
  c.modal_time = 0                 # §4.6: >0 blends RGB → semantic over frames 0..modal_time−1 (reference: 0)
  c.cond_aug = 0.02
  c.batch_size = 1
  c.seed = 0
  c.shuffle = True
  c.num_epochs = -1                # -1: repeat forever
  c.num_workers = 0                # >0: Grain worker processes (mp_prefetch), CPU jax inside
  c.num_threads = 1                # in-process read threads (each renders one example at a time)
  c.prefetch_buffer_size = 2
  c.shard_index = -1               # -1: jax.process_index()
  c.shard_count = -1               # -1: jax.process_count()
  c.max_scenes = -1                # cap on scenes (smoke runs)
  c.renderer = 'host'              # 'host' (Numba, render_host: ~6× faster on CPU cores) or 'jax' (jitted render)
  c.keep_freed_memory = True       # glibc malloc keeps freed clip buffers for reuse (see keep_freed_memory)
  c.drop_remainder = True
  if name == 'kubric':
    c.dataset, c.builder_config = 'kubric_4d', 'full'
  elif name == 'pardom':
    c.dataset, c.builder_config, c.trajectory = 'pardom_4d', 'full', 'pardom_gradual'
  elif name == 'procedural':
    pass
  elif name == 'tiny':
    c.builder_config = 'tiny'
    c.height, c.width, c.render_height, c.render_width = 64, 96, 70, 105
    c.num_frames = 4
    c.trajectory = 'kubric_gradual_max90'
  else:
    raise ValueError(f'unknown data preset {name!r}; choose kubric, pardom, procedural or tiny')
  for item in overrides:
    key, _, value = item.partition('=')
    if key not in c:
      raise KeyError(f'unknown data config field {key!r} in preset string {preset!r}')
    old = c[key]
    c[key] = type(old)(value) if not isinstance(old, bool) else value.lower() in ('1', 'true', 'yes')
  return c


# ------------------------------------------------------------------------------------------------ sources

class TfdsSceneSource:
  """Random access to (scene, frame) records of a built TFDS dataset (tfds_builders)."""

  def __init__(self, data_dir: str, dataset: str, builder_config: str, split: str, max_scenes: int = -1,
               manual_dir: str | None = None):
    self._args = (data_dir, dataset, builder_config, split, max_scenes, manual_dir)
    builder = tfds_builders.get_builder(dataset, data_dir=data_dir, config=builder_config,
                                        manual_dir=manual_dir or None)
    if not builder.is_prepared():
      raise FileNotFoundError(
          f'TFDS dataset {dataset}/{builder_config} is not built under {data_dir!r}; run '
          f'`gcd-jax data build {dataset} --data-dir {data_dir} --config {builder_config}` first.')
    self.scenes = tfds_builders.frame_index(builder, split)
    if max_scenes > 0:
      self.scenes = self.scenes[:max_scenes]
    self._builder = builder
    self._split = split
    self._ds = None
    self._ds_full = None

  def __getstate__(self):  # worker processes reopen the ArrayRecord files themselves
    return {'_args': self._args}

  def __setstate__(self, state):
    self.__init__(*state['_args'])

  @property
  def data_source(self):
    if self._ds is None:  # segm is not used for training: leave it compressed
      import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
      self._ds = self._builder.as_data_source(split=self._split, decoders={'segm': tfds.decode.SkipDecoding()})
    return self._ds

  @property
  def full_data_source(self):
    """Records with segm decoded too (semantic targets, evaluation)."""
    if self._ds_full is None:
      self._ds_full = self._builder.as_data_source(split=self._split)
    return self._ds_full

  def __len__(self):
    return len(self.scenes)

  def scene(self, pos: int) -> tuple[int, str, list[int]]:
    scene_idx, name, frames, _ = self.scenes[pos]
    return scene_idx, name, frames

  @property
  def semantic_palette(self) -> np.ndarray:
    """Class id → colour [256, 3] uint8 (ParallelDomain builds; clear error otherwise)."""
    return tfds_builders.semantic_palette(self._builder)

  def load_clip(self, pos: int, frames, with_segm: bool = False) -> dict[str, np.ndarray]:
    """→ rgb [T, V, H, W, 3] uint8, depth [T, V, H, W] float16 (as stored; the renderers read it
    directly), intrinsics [V, 3, 3], extrinsics [T, V, 4, 4]; with_segm: also segm [T, V, H, W] uint8
    (Kubric-like: instance id; PD: semantic class id) — decoded only then (training RGB targets skip it)."""
    scene_idx, name, avail, first = self.scenes[pos]
    recs = []
    source = self.full_data_source if with_segm else self.data_source
    for t in frames:
      rec = source[first + avail.index(int(t))]
      if int(rec['id']) != tfds_builders.record_id(scene_idx, t):
        raise RuntimeError(f'record for {name} frame {t} has id {rec["id"]}; the dataset index is stale — '
                           'rebuild the TFDS dataset.')
      recs.append(rec)
    out = {'rgb': np.stack([r['rgb'] for r in recs]),
           'depth': np.stack([r['depth'] for r in recs]),
           'intrinsics': np.asarray(recs[0]['intrinsics'], np.float32),
           'extrinsics': np.stack([r['extrinsics'] for r in recs]).astype(np.float32),
           'dset': int(recs[0]['dset'])}
    if with_segm:
      out['segm'] = np.stack([r['segm'] for r in recs])
    return out


class PointCloudSceneSource:
  """Random access to a merged point-cloud store (pointcloud_store; reference .pt files too)."""

  def __init__(self, root: str, scene_names=None, max_scenes: int = -1, dset: int = 1):
    from data_pipelines.pointcloud_store import PointCloudStore  # pylint: disable=g-import-not-at-top
    self.store = PointCloudStore(root)
    names = list(scene_names) if scene_names is not None else self.store.scenes()
    names = names[:max_scenes] if max_scenes > 0 else names
    self.dset = dset
    self.scenes = []
    for name in names:
      cams = self.store.cameras(name)
      self.scenes.append((int(''.join(ch for ch in name if ch.isdigit())), name,
                          [int(f) for f in cams['frames']], cams))

  def __len__(self):
    return len(self.scenes)

  def scene(self, pos: int):
    scene_idx, name, frames, _ = self.scenes[pos]
    return scene_idx, name, frames

  @property
  def semantic_palette(self) -> np.ndarray:
    """Class id → colour [256, 3] uint8 (stored in cameras.npz by PD builds; clear error otherwise)."""
    cams = self.scenes[0][3] if self.scenes else {}
    if 'semantic_palette' not in cams:
      raise ValueError(f'point-cloud store {self.store.root!r} has no semantic_palette in cameras.npz: rebuild it '
                       'from a ParallelDomain-4D copy with its ontology/*.json (docs/reference.md §4.3) to train or '
                       'evaluate semantic models.')
    return np.asarray(cams['semantic_palette'], np.uint8)

  def load_clip(self, pos: int, frames, with_segm: bool = False) -> dict[str, np.ndarray]:
    """→ xyz [T, P, 3] float16 (as stored), rgb [T, P, 3] uint8, intrinsics [V, 3, 3] (source-view pixels);
    with_segm (PD stores: class-id segm [V, N, 1]): also segm [T, P] uint8. Frames are read straight into
    the clip arrays (no per-frame copies; segm only when asked for)."""
    _, name, _, cams = self.scenes[pos]
    keys = ('xyz', 'rgb', 'segm') if with_segm else ('xyz', 'rgb')
    clip = None
    for i, t in enumerate(frames):
      dest = None if clip is None else {k: clip[k][i] for k in keys}
      p = self.store.frame(name, int(t), keys=keys, out=dest)
      if clip is None:
        clip = {k: np.empty((len(frames),) + p[k].shape, p[k].dtype) for k in keys}
        dest = {k: clip[k][i] for k in keys}
      for k in keys:
        if p[k] is not dest[k]:  # first frame, or a reference .pt file
          dest[k][...] = p[k]
    xyz, rgb = (clip[k].reshape(len(frames), -1, 3) for k in ('xyz', 'rgb'))
    out = {'xyz': xyz, 'rgb': rgb, 'intrinsics': np.asarray(cams['intrinsics'], np.float32),
           'source_size': (int(cams['width']), int(cams['height'])), 'dset': self.dset}
    if with_segm:
      if clip['segm'].shape[-1] != 1:
        raise ValueError(f'{name}: segm in this store holds colours (Kubric instances), not ParallelDomain class ids')
      out['segm'] = clip['segm'].reshape(len(frames), -1)
    return out


def make_source(cfg):
  if cfg.source == 'tfds':
    return TfdsSceneSource(cfg.data_dir, cfg.dataset, cfg.builder_config, cfg.split, cfg.max_scenes,
                           cfg.manual_dir or None)
  if cfg.source == 'pointcloud':
    if not cfg.pcl_root:
      raise ValueError('source="pointcloud" needs cfg.pcl_root (a store written by pointcloud_store.build_scene_store)')
    return PointCloudSceneSource(cfg.pcl_root, max_scenes=cfg.max_scenes,
                                 dset=tfds_builders.DSET_PARDOM if cfg.dataset == 'pardom_4d' else 1)
  raise ValueError(f'unknown source {cfg.source!r}; use "tfds" or "pointcloud"')


# ------------------------------------------------------------------------------------------------ examples

PD_INTRINSICS_VIEW = -2  # avail_intrinsics[-2:-1] = sorted view 17 = yaw-60 (§4.6, §6.13)


def example_rng(seed: int, index: int, num_scenes: int) -> np.random.Generator:
  """Per-example generator keyed by (seed, epoch, index in epoch): independent of workers/threads/hosts."""
  return np.random.default_rng(np.random.SeedSequence([int(seed), int(index) // num_scenes, int(index) % num_scenes]))


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
  return np.random.default_rng(np.random.SeedSequence([int(seed), int(epoch), 0x5EED])).permutation(n)


def to_model_range(frames01):
  """[0, 1] → [-1, 1] (§4.10)."""
  return frames01 * 2.0 - 1.0


@dataclasses.dataclass
class ExampleMaker:
  """Global example index → §4.10 example dict (unbatched, channels-last)."""

  cfg: ml_collections.ConfigDict
  source: object

  def __post_init__(self):
    self._n = len(self.source)
    if self._n == 0:
      raise ValueError(f'no scenes in split {self.cfg.split!r} of {self.cfg.dataset}')
    self._palette = check_output_modality(self.cfg, self.source)

  def scene_position(self, index: int) -> int:
    epoch, i = divmod(int(index), self._n)
    if not self.cfg.shuffle:
      return i
    return int(_cached_permutation(self.cfg.seed, epoch, self._n)[i])

  def __call__(self, index: int) -> dict[str, np.ndarray]:
    if self.cfg.get('keep_freed_memory', True):
      keep_freed_memory()  # here, not in __post_init__: Grain workers unpickle the maker without it
    rng = example_rng(self.cfg.seed, index, self._n)
    pos = self.scene_position(index)
    scene_idx, name, frames = self.source.scene(pos)
    is_pd = self.cfg.dataset == 'pardom_4d'
    for _ in range(100):  # the reference retries failed samples (§4.5); here: clips hitting missing PD frames
      clip = sample_clip_and_cameras(rng, max(frames) + 1, self.cfg)
      if all(int(t) in frames for t in clip['clip_frames']):
        break
    else:
      raise RuntimeError(f'{name}: no clip of {self.cfg.num_frames} frames fits the available frames {frames}')
    data = self.source.load_clip(pos, clip['clip_frames'], with_segm=self._palette is not None)
    if is_pd:
      if self._palette is not None:
        data['semantic_palette'] = self._palette
      src_frames, dst_frames = render_pardom_views(data, clip, self.cfg)
    else:
      src_frames, dst_frames = render_kubric_views(data, clip, self.cfg)
    t = self.cfg.num_frames
    cond = np.asarray(src_frames, np.float32)
    noise = rng.standard_normal(cond.shape, dtype=np.float32)
    return {
        'jpg': np.asarray(dst_frames, np.float32),
        'cond_frames_without_noise': cond.astype(np.float32),
        'cond_frames': (cond + self.cfg.cond_aug * noise).astype(np.float32),
        'fps_id': np.full((t,), clip['fps'], np.int32),
        'motion_bucket_id': np.full((t,), clip['motion_bucket_id'], np.int32),
        'cond_aug': np.full((t,), self.cfg.cond_aug, np.float32),
        'image_only_indicator': np.zeros((t,), np.float32),
        'scaled_relative_angles': np.asarray(clip['scaled_relative_angles'], np.float32),
        'scaled_relative_pose': np.asarray(clip['scaled_relative_pose'], np.float32),
        'dset': np.int32(data['dset']),
        'idx': np.int64(index),
        'scene_idx': np.int32(scene_idx),
        'frame_start': np.int32(clip['frame_start']),
        'frame_skip': np.int32(clip['frame_skip']),
        'reverse': np.int32(bool(clip['reverse'])),
        'clip_frames': np.asarray(clip['clip_frames'], np.int32),
        'src_view_idx': np.int32(clip.get('src_view_idx', -1)),
        'dst_view_idx': np.int32(clip.get('dst_view_idx', -1)),
        'src_camera': np.asarray(clip['src_camera'], np.float32),
        'dst_camera': np.asarray(clip['dst_camera'], np.float32),
    }


def check_output_modality(cfg, source) -> np.ndarray | None:
  """Validate cfg.output_modality / modal_time against the dataset; → the semantic palette [256, 3] uint8 when
  the target is semantic, else None. Fails before any example is rendered."""
  modality = cfg.get('output_modality', 'rgb')
  if modality not in ('rgb', 'semantic'):
    raise ValueError(f'output_modality={modality!r}; choose "rgb" or "semantic" (the reference\'s "segm")')
  if int(cfg.get('modal_time', 0)) < 0:
    raise ValueError(f'modal_time={cfg.modal_time} must be ≥ 0 (0: no RGB→semantic blending, the reference)')
  if modality == 'rgb':
    return None
  if cfg.dataset != 'pardom_4d':
    raise ValueError(f'output_modality="semantic" needs ParallelDomain-4D class labels; dataset {cfg.dataset!r} '
                     'has instance ids only. Use dataset=pardom_4d or output_modality=rgb.')
  return source.semantic_palette


def keep_freed_memory():
  """glibc malloc keeps freed clip buffers for reuse (gcd_jax/hostmem.py), in every process that renders
  examples, Grain workers included, also on accelerator hosts. An example allocates ~0.3–0.5 GB of clip arrays;
  with glibc's defaults each is a fresh mmap whose first touch page-faults (~70 k faults, 0.3–0.5 s of kernel
  time per Kubric-size example on the benchmark VM)."""
  from gcd_jax import hostmem  # pylint: disable=g-import-not-at-top
  hostmem.keep_freed_memory(force=True)


@functools.lru_cache(maxsize=8)
def _cached_permutation(seed, epoch, n):
  return epoch_permutation(seed, epoch, n)


def _cpu_worker_init(worker_index: int, worker_count: int):
  """Grain workers render with CPU jax: the accelerator belongs to the training process."""
  del worker_index, worker_count
  os.environ['JAX_PLATFORMS'] = 'cpu'
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update('jax_platforms', 'cpu')


def resolve_shard(cfg) -> tuple[int, int]:
  if cfg.shard_count > 0:
    index, count = cfg.shard_index, cfg.shard_count
  else:
    import jax  # pylint: disable=g-import-not-at-top
    index, count = jax.process_index(), jax.process_count()
    index = cfg.shard_index if cfg.shard_index >= 0 else index
  if not 0 <= index < count:
    raise ValueError(f'shard_index {index} outside [0, {count})')
  return index, count


def make_dataset(cfg, source=None) -> grain.MapDataset:
  """Batched MapDataset of this host's examples. Element k of host s is global example s + k·S."""
  source = source if source is not None else make_source(cfg)
  shard_index, shard_count = resolve_shard(cfg)
  n = len(source)
  total = n * cfg.num_epochs if cfg.num_epochs > 0 else sys.maxsize // 2
  ds = grain.MapDataset.range(shard_index, total, shard_count)
  ds = ds.map(ExampleMaker(cfg, source))
  return ds.batch(cfg.batch_size, drop_remainder=cfg.drop_remainder)


def make_iterator(cfg, source=None):
  """Training iterator (grain DatasetIterator): `next(it)` → batch dict; `it.get_state()`/`set_state()`."""
  ds = make_dataset(cfg, source).to_iter_dataset(
      grain.ReadOptions(num_threads=max(cfg.num_threads, 1), prefetch_buffer_size=max(cfg.prefetch_buffer_size, 1)))
  if cfg.num_workers > 0:
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=cfg.num_workers), worker_init_fn=_cpu_worker_init)
  return iter(ds)


def checkpoint_handler():
  """Orbax handler for the iterator (grain.checkpoint): use with `ocp.args.Composite(data=
  grain.checkpoint.CheckpointSave(it))` / `CheckpointRestore(it)` in a CheckpointManager whose
  `item_handlers` maps 'data' to this handler. One JSON file per process (process_{i}-of-{n}.json)."""
  return grain.checkpoint.CheckpointHandler()


# ---------------------------------------------------------------------------- geometry glue (gcd_jax.geometry)

def _geometry():
  """The camera/trajectory/renderer implementation (gcd_jax.geometry, §4.5–4.9)."""
  from gcd_jax.geometry import cameras, render, trajectory  # pylint: disable=g-import-not-at-top
  return cameras, trajectory, render


def render_intrinsics(k_pixels, source_wh, render_hw) -> np.ndarray:
  """Source-view pixel K → render-pixel K (§4.8 step 1, incl. the centre-crop aspect rule). → [3, 3]."""
  cameras, _, _ = _geometry()
  (sw, sh), (rh, rw) = source_wh, render_hw
  return cameras.render_intrinsics(cameras.normalize_intrinsics(k_pixels, sw, sh), rw, rh, sw / sh)


@functools.lru_cache(maxsize=16)
def _jitted_renderer(render_hw, out_hw):
  """jit of the §4.8 renderer over cameras × frames; cached per resolution (one compile per shape).

  Frames go through `lax.map` (sequential) and the cameras of one frame through `vmap`: a full Kubric
  frame has 16·576·384 = 3.5 M points, so vmapping all T·C renders would need several GB of scratch.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  _, _, render = _geometry()

  def one(xyz, rgb, k, c2w):
    return render.render_view(xyz, rgb, k, c2w, render_height=render_hw[0], render_width=render_hw[1],
                              out_height=out_hw[0], out_width=out_hw[1])

  @jax.jit
  def render_clip(xyz, rgb_u8, k, cams):
    """xyz [T, P, 3] (f16/f32), rgb_u8 [T, P, 3], k [3, 3] render pixels, cams [C, T, 4, 4]
    → [C, T, H, W, 3] in [−1, 1]. Per-frame casts keep the whole clip in its compact storage dtypes."""
    def frame(args):
      x, c, cam_t = args  # [P, 3], [P, 3], [C, 4, 4]
      return jax.vmap(one, in_axes=(None, None, None, 0))(x.astype(jnp.float32), c.astype(jnp.float32) / 255.0,
                                                           k, cam_t)
    out = jax.lax.map(frame, (xyz, rgb_u8, jnp.swapaxes(cams, 0, 1)))  # [T, C, H, W, 3]
    return jnp.swapaxes(out, 0, 1)

  return render_clip


def render_clip(xyz, rgb, k, cams, cfg) -> np.ndarray:
  """Render [C, T] views of the clip's merged clouds with the jitted renderer → [C, T, H, W, 3] in [−1, 1]
  (§4.8). xyz [T, P, 3], rgb [T, P, 3] uint8.

  No frustum culling: compacting the ~45 % of a Kubric-size cloud that a camera keeps (nonzero + gather)
  measured slower (10.0 s vs 8.6 s per 28-view clip) than splatting every point with the fused renderer."""
  render_hw, out_hw = (cfg.render_height, cfg.render_width), (cfg.height, cfg.width)
  return np.asarray(_jitted_renderer(render_hw, out_hw)(xyz, rgb, np.asarray(k, np.float32),
                                                        np.asarray(cams, np.float32)))


def render_clip_host(data, k, cams, cfg) -> np.ndarray:
  """`render_clip` on this host core (gcd_jax.geometry.render_host, same math; ~6× faster per core on
  Kubric-size clouds). data: a source's `load_clip` dict (merged xyz, or RGB-D views unprojected here,
  frame by frame); cams [C, T, 4, 4] → [C, T, H, W, 3] float32 in [−1, 1].

  Each frame's cloud is built once (float16 → float32 or unprojection) into a reused buffer and splatted
  for all C cameras."""
  from gcd_jax.geometry import render_host  # pylint: disable=g-import-not-at-top
  cams = np.asarray(cams, np.float32)
  n_cams, t = cams.shape[:2]
  out = np.empty((n_cams, t, cfg.height, cfg.width, 3), np.float32)
  k = np.asarray(k, np.float32)
  if 'xyz' in data:
    n = data['xyz'].shape[1]
  else:
    n = int(np.prod(data['depth'].shape[1:]))
  planar = render_host.scratch_array('clip_planar', (3, n), np.float32)
  for f in range(t):
    if 'xyz' in data:
      render_host.planar_points(data['xyz'][f], out=planar)
      colors = data['rgb'][f]
    else:
      render_host.unproject_planar(data['depth'][f], data['intrinsics'], data['extrinsics'][f], out=planar)
      colors = data['rgb'][f].reshape(-1, 3)
    for c in range(n_cams):
      img, _ = render_host.splat_planar(planar, colors, k, cams[c, f], cfg.render_height, cfg.render_width)
      out[c, f] = render_host.finish_view(img, cfg.height, cfg.width)
  return out


def render_clip_views(data, k, cams, cfg) -> np.ndarray:
  """[C, T] views of the clip (cfg.renderer: 'host' or 'jax') → [C, T, H, W, 3] in [−1, 1]."""
  renderer = cfg.get('renderer', 'host')  # configs saved before the field existed: the default
  if renderer == 'host':
    return render_clip_host(data, k, cams, cfg)
  if renderer == 'jax':
    xyz, rgb = clip_points(data)
    return render_clip(xyz, rgb, k, cams, cfg)
  raise ValueError(f'unknown renderer {renderer!r}; use "host" (Numba, CPU) or "jax"')


@functools.lru_cache(maxsize=4)
def _jitted_unproject():
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  @jax.jit
  def unproject(depth, k, c2w):
    """depth [T, V, H, W] planar, k [V, 3, 3], c2w [T, V, 4, 4] → world xyz [T, V·H·W, 3] (§4.4)."""
    t, v, h, w = depth.shape
    depth = depth.astype(jnp.float32)  # stored float16
    vv, uu = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32), indexing='ij')
    x = (uu - k[:, None, None, 0, 2]) / k[:, None, None, 0, 0]
    y = (vv - k[:, None, None, 1, 2]) / k[:, None, None, 1, 1]
    cam = jnp.stack([x[None] * depth, y[None] * depth, depth], -1)        # [T, V, H, W, 3]
    world = jnp.einsum('tvhwj,tvij->tvhwi', cam, c2w[..., :3, :3]) + c2w[:, :, None, None, :3, 3]
    return world.reshape(t, v * h * w, 3)

  return unproject


def clip_points(data) -> tuple[np.ndarray, np.ndarray]:
  """Merged clouds of the clip: xyz [T, P, 3] f32, rgb [T, P, 3] uint8 (P = V·H·W, every pixel, §4.4)."""
  if 'xyz' in data:
    return data['xyz'], data['rgb']
  t, v, h, w = data['depth'].shape
  xyz = _jitted_unproject()(data['depth'], data['intrinsics'], data['extrinsics'])
  return xyz, data['rgb'].reshape(t, v * h * w, 3)


def _source_wh(data):
  if 'source_size' in data:
    return data['source_size']
  return data['depth'].shape[-1], data['depth'].shape[-2]


def render_kubric_views(data, clip, cfg) -> tuple[np.ndarray, np.ndarray]:
  """§4.5: input and target both rendered from the merged cloud; intrinsics of the dataset cameras.
  → (input, target) [T, H, W, 3] in [−1, 1]."""
  k = render_intrinsics(data['intrinsics'][0], _source_wh(data), (cfg.render_height, cfg.render_width))
  out = render_clip_views(data, k, np.stack([clip['src_camera'], clip['dst_camera']]), cfg)
  return out[0], out[1]


def pardom_input_video(data, cfg) -> np.ndarray:
  """§4.6 input video: the real ego (yaw-0) RGB frames, centre-cropped to 3:2 and bilinearly resized to the
  model size (`load_pardom_video_vis_frames`). → [T, H, W, 3] in [−1, 1]."""
  import jax  # pylint: disable=g-import-not-at-top
  num_views = data['intrinsics'].shape[0]
  src_view = num_views - 3  # sorted order ends with yaw-0, yaw-60, yaw-neg-60
  sw, sh = _source_wh(data)
  frames = (data['rgb'][:, src_view] if 'depth' in data else
            data['rgb'].reshape(data['rgb'].shape[0], num_views, sh, sw, 3)[:, src_view])
  crop_h = min(sh, int(round(sw * cfg.height / cfg.width)))
  crop_w = min(sw, int(round(sh * cfg.width / cfg.height)))
  y0, x0 = (sh - crop_h) // 2, (sw - crop_w) // 2
  frames = frames[:, y0:y0 + crop_h, x0:x0 + crop_w].astype(np.float32) / 255.0
  src = np.asarray(jax.image.resize(frames, (frames.shape[0], cfg.height, cfg.width, 3), 'linear', antialias=False))
  return to_model_range(np.clip(src, 0.0, 1.0))


def render_pardom_views(data, clip, cfg) -> tuple[np.ndarray, np.ndarray]:
  """§4.6: input = the real ego (yaw-0) frames (`pardom_input_video`); target rendered from the merged cloud
  with yaw-60's intrinsics (`avail_intrinsics[-2:-1]`, §6.13), in RGB or (cfg.output_modality='semantic')
  ontology colours. → [T, H, W, 3] × 2 in [−1, 1]."""
  sw, sh = _source_wh(data)
  src = pardom_input_video(data, cfg)
  k = render_intrinsics(data['intrinsics'][PD_INTRINSICS_VIEW], (sw, sh), (cfg.render_height, cfg.render_width))
  cams = clip['dst_camera'][None]
  if cfg.get('output_modality', 'rgb') == 'semantic':
    # Same cloud, points coloured by class (`rgb` replaced in place of shape: [T, V, H, W, 3] or [T, P, 3]).
    semantic = dict(data, rgb=semantic_point_colors(data).reshape(data['rgb'].shape))
    target = render_clip_views(semantic, k, cams, cfg)[0]
    modal_time = int(cfg.get('modal_time', 0))
    if modal_time > 0:
      # §4.6 modal_time: frame t < modal_time shows (1 − t/modal_time)·rgb + (t/modal_time)·semantic.
      rgb_target = render_clip_views(data, k, cams, cfg)[0]
      alpha = np.minimum(np.arange(target.shape[0], dtype=np.float32) / modal_time, 1.0)[:, None, None, None]
      target = (1.0 - alpha) * rgb_target + alpha * target
  else:
    target = render_clip_views(data, k, cams, cfg)[0]
  clip['src_view_idx'] = data['intrinsics'].shape[0] - 3
  return src, target


def semantic_point_colors(data) -> np.ndarray:
  """ParallelDomain semantic colours of the clip's merged clouds: palette[class id] per point (§4.6,
  `output_modality: segm`) → [T, P, 3] uint8, aligned with `clip_points`' rgb.

  data: a `load_clip` dict with 'segm' (class ids, [T, V, H, W] or [T, P]) and 'semantic_palette' [256, 3].
  Void (255) takes the ontology's Void colour, or black if the ontology does not list it."""
  if 'segm' not in data or 'semantic_palette' not in data:
    missing = [k for k in ('segm', 'semantic_palette') if k not in data]
    raise ValueError(f'semantic target needs per-point class ids and the ontology palette; missing {missing}. '
                     'Build the ParallelDomain dataset (or point-cloud store) with this version, ontology included.')
  segm = np.asarray(data['segm'])
  return np.asarray(data['semantic_palette'], np.uint8)[segm.reshape(segm.shape[0], -1)]


@functools.lru_cache(maxsize=64)
def _trajectory_config(preset: str, num_frames: int, total_frames: int):
  _, trajectory, _ = _geometry()
  tcfg = trajectory.trajectory_config(preset)
  tcfg.num_frames, tcfg.total_frames = int(num_frames), int(total_frames)
  return tcfg


def sample_clip_and_cameras(rng: np.random.Generator, num_scene_frames: int, cfg) -> dict:
  """§4.5 (Kubric-like) / §4.6 (PD) clip + camera sampling by gcd_jax.geometry.trajectory, with the scene's
  own frame count. Adds src_camera / dst_camera [T, 4, 4] (camera-to-world)."""
  _, trajectory, _ = _geometry()
  tcfg = _trajectory_config(cfg.trajectory, cfg.num_frames, num_scene_frames)
  if tcfg.dataset == 'pardom':
    clip = trajectory.sample_pardom_clip_and_trajectory(rng, tcfg)
  else:
    clip = trajectory.sample_kubric_clip_and_trajectory(rng, tcfg)
  clip['src_camera'], clip['dst_camera'] = clip['src_c2w'], clip['dst_c2w']
  return clip
