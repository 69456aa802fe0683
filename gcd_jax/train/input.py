"""Training input: the Grain pipeline of data_pipelines (per-host shards) or seeded synthetic videos.

Either way the iterator is a Grain `DatasetIterator` whose state is checkpointed with the model, and host s
of S reads global examples s, s+S, s+2S, ... (each host's batch is its slice of the global batch).
`source='synthetic'` needs no dataset: example i is a smooth random video pair seeded by (seed, i) — used
by the trainer tests where the data pipeline is not the subject.
"""

from __future__ import annotations

import dataclasses
import sys

import grain
import jax
import numpy as np

# Batch keys the train step consumes (the rest of §4.10's dict is metadata for previews/eval).
TRAIN_KEYS = ('jpg', 'cond_frames_without_noise', 'cond_frames', 'fps_id', 'motion_bucket_id', 'cond_aug',
              'scaled_relative_angles', 'scaled_relative_pose', 'idx')
FEATURE_KEYS = ('clip_embeds', 'concat_latents', 'target_mean', 'target_logvar')


@dataclasses.dataclass
class SyntheticExample:
  """Global example index → a §4.10-shaped example (smooth colour fields that drift over time)."""
  seed: int
  num_frames: int
  height: int
  width: int
  cond_aug: float = 0.02
  feature_dim: int = 0  # > 0: also emit precomputed features (features='precomputed'), CLIP width

  def __call__(self, index: int) -> dict:
    rng = np.random.default_rng(np.random.SeedSequence([self.seed, int(index), 0x5717]))
    t, h, w = self.num_frames, self.height, self.width
    yy, xx = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing='ij')

    def video(params):
      a, b, c, d = params
      frames = [np.tanh(a[None, None] * xx[..., None] + b[None, None] * yy[..., None] + c * k + d)
                for k in np.linspace(0, 1, t)]
      return np.stack(frames).astype(np.float32)

    src = video([rng.normal(size=3), rng.normal(size=3), rng.normal(size=3), rng.normal(size=3)])
    dst = np.roll(src, shift=int(rng.integers(1, 4)), axis=2)  # a "moved camera": shifted content
    angles = rng.uniform(-1, 1, (t, 3)).astype(np.float32)
    out = {
        'jpg': dst,
        'cond_frames_without_noise': src,
        'cond_frames': (src + self.cond_aug * rng.standard_normal(src.shape)).astype(np.float32),
        'fps_id': np.full((t,), int(rng.integers(6, 25)), np.int32),
        'motion_bucket_id': np.full((t,), int(rng.integers(0, 256)), np.int32),
        'cond_aug': np.full((t,), self.cond_aug, np.float32),
        'scaled_relative_angles': angles,
        'scaled_relative_pose': rng.standard_normal((t, 3, 4)).astype(np.float32),
        'idx': np.int64(index),
    }
    if self.feature_dim:
      lat = (t, h // 8, w // 8, 4)
      out['clip_embeds'] = rng.standard_normal((t, self.feature_dim)).astype(np.float32)
      out['concat_latents'] = rng.standard_normal(lat).astype(np.float32)
      out['target_mean'] = (rng.standard_normal(lat) * 5).astype(np.float32)  # ~ VAE latents (×0.18215 ≈ 1)
      out['target_logvar'] = np.full(lat, -6.0, np.float32)
    return out


def local_batch_size(global_batch: int) -> int:
  n = jax.process_count()
  if global_batch % n:
    raise ValueError(f'batch_size {global_batch} is not divisible by the {n} processes')
  return global_batch // n


def make_train_iterator(config):
  """Grain iterator over this host's batches ([B_local, T, ...] numpy dicts)."""
  d = config.data
  b_local = local_batch_size(config.batch_size)
  if d.source == 'synthetic':
    index, count = jax.process_index(), jax.process_count()
    ds = grain.MapDataset.range(index, sys.maxsize // 2, count)
    feature_dim = int(config.model.clip.projection_dim) if config.features == 'precomputed' else 0
    ds = ds.map(SyntheticExample(int(d.seed), int(d.num_frames), int(d.height), int(d.width), float(d.cond_aug),
                                 feature_dim))
    ds = ds.batch(b_local, drop_remainder=True)
    return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=1)))
  from data_pipelines import input_pipeline  # pylint: disable=g-import-not-at-top
  dc = d.copy_and_resolve_references()
  dc.batch_size = b_local
  return input_pipeline.make_iterator(dc)


def train_batch(batch: dict, features: str) -> dict:
  keys = TRAIN_KEYS + (FEATURE_KEYS if features == 'precomputed' else ())
  missing = [k for k in keys if k not in batch and k != 'idx']
  if missing:
    raise KeyError(f'training batch lacks {missing}; the input pipeline must produce §4.10 keys'
                   + (' and precomputed features' if features == 'precomputed' else ''))
  return {k: np.asarray(batch[k]) for k in keys if k in batch}
