"""Model loading and batched video generation shared by `gcd-jax evaluate` and `gcd-jax sample`.

`VideoGenerator(checkpoint, model_cfg, ...)` restores the network / VAE / CLIP of a gcd-jax model
checkpoint onto the local devices (parameters replicated, videos sharded over a 1-D 'data' mesh) and
maps a batch of §4.10 conditioning dicts to sampled videos in [0, 1]:

  gen(examples: list of per-video dicts [T, ...], keys: uint32 [B, S, 2]) → float32 [B, S, T, H, W, 3]

Each (video, sample) gets its own key, so results do not depend on how videos are batched.
"""

from __future__ import annotations

import functools
import json
from typing import Sequence

import jax
import numpy as np

COND_KEYS = ('cond_frames_without_noise', 'cond_frames', 'fps_id', 'motion_bucket_id', 'cond_aug',
             'scaled_relative_angles', 'scaled_relative_pose')
# Config fields that decide parameter shapes: a checkpoint restored with another config fails.
SHAPE_FIELDS = ('unet', 'camera', 'vae', 'clip')


class ModelConfigError(ValueError):
  """--config does not fit the checkpoint (or is not a model/training config)."""


def resolve_config(spec: str, overrides=()):
  """--config → (model config, training config or None); see gcd_jax/config_flags.py."""
  from gcd_jax import config_flags  # pylint: disable=g-import-not-at-top
  return config_flags.load_model_or_training(spec, overrides)


def config_from_checkpoint(ckpt_dir: str):
  """(model config, training config or None) stored with a checkpoint: `train_config` is written by
  `train --export` and by workdir exports (gcd_jax/train/workdir.py), absent from `gcd-jax convert` output."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  from gcd_jax.convert import checkpoint_io  # pylint: disable=g-import-not-at-top
  meta = checkpoint_io.read_metadata(ckpt_dir)
  train = meta.get('train_config')
  return checkpoint_io.config_from_dict(meta['model_config']), (ml_collections.ConfigDict(train) if train else None)


def check_checkpoint_matches(ckpt_dir: str, model_cfg) -> dict:
  """Reads the checkpoint metadata and compares shape-deciding fields with model_cfg, before any compute."""
  from gcd_jax.convert import checkpoint_io  # pylint: disable=g-import-not-at-top
  meta = checkpoint_io.read_metadata(ckpt_dir)
  stored = meta.get('model_config', {})
  want = checkpoint_io.config_to_dict(model_cfg)
  diffs = []
  for field in SHAPE_FIELDS:
    a, b = stored.get(field), want.get(field)
    if json.dumps(a, sort_keys=True) != json.dumps(b, sort_keys=True):
      keys = sorted(set((a or {}).keys()) | set((b or {}).keys())) if isinstance(a, dict) or isinstance(b, dict) else []
      sub = [f'{field}.{k}: checkpoint {(a or {}).get(k)!r} vs config {(b or {}).get(k)!r}' for k in keys
             if json.dumps((a or {}).get(k)) != json.dumps((b or {}).get(k))]
      diffs += sub or [f'{field}: checkpoint {a!r} vs config {b!r}']
  if diffs:
    raise ModelConfigError(
        f'checkpoint {ckpt_dir} was made for model config {stored.get("name")!r}, which differs from '
        f'--config ({want.get("name")!r}): ' + '; '.join(diffs[:6]) +
        ('; ...' if len(diffs) > 6 else '') + '. Pass the config the checkpoint was converted/trained with.')
  missing = [c for c in ('network', 'vae', 'clip') if c not in meta.get('components', [])]
  if missing:
    raise ModelConfigError(f'checkpoint {ckpt_dir} lacks {missing}; sampling needs network, vae and clip')
  return meta


def required_multiple(model_cfg) -> int:
  """Pixel sizes must be multiples of this: VAE downsampling × U-Net downsampling (64 for SVD/GCD)."""
  vae = 2 ** (len(model_cfg.vae.block_out_channels) - 1)
  unet = 2 ** (len(model_cfg.unet.channel_mult) - 1)
  return vae * unet


def local_mesh(batch_size: int):
  """1-D 'data' mesh over the largest number of local devices that divides batch_size."""
  import jax  # pylint: disable=g-import-not-at-top
  devs = jax.local_devices()
  n = max(d for d in range(1, len(devs) + 1) if batch_size % d == 0)
  return jax.sharding.Mesh(np.asarray(devs[:n]), ('data',))


def stack_examples(examples: Sequence[dict], batch_size: int) -> tuple[dict, int]:
  """Per-video dicts → batched arrays [B, T, ...], padded to batch_size by repeating the last video."""
  n = len(examples)
  if n == 0 or n > batch_size:
    raise ValueError(f'need 1..{batch_size} examples, got {n}')
  padded = list(examples) + [examples[-1]] * (batch_size - n)
  return {k: np.stack([np.asarray(e[k]) for e in padded]) for k in COND_KEYS if k in examples[0]}, n


# ------------------------------------------------------------------------------------------ sampling


def sample_videos(network, vae, clip, batch: dict, keys, cfg, diff_cfg):
  """batch [B, T, ...] (COND_KEYS), keys uint32 [B, S, 2] → videos [B, S, T, H, W, 3] in [0, 1].

  Conditioning once per video (no dropout, §1.3); per sample s, `diffusion.sampler.sample_latents` with the
  per-video keys keys[:, s] (each video's x_T from its own key, so a video does not depend on its batch
  mates), then the chunked decode: the one sampler of the project."""
  import einops  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from gcd_jax.diffusion import conditioner as cond_lib  # pylint: disable=g-import-not-at-top
  from gcd_jax.diffusion import sampler as sampler_lib  # pylint: disable=g-import-not-at-top
  from gcd_jax.diffusion.denoiser import network_fn_from_unet  # pylint: disable=g-import-not-at-top
  b, t, hp, wp = batch['cond_frames'].shape[:4]
  rows = {k: einops.rearrange(v, 'b t ... -> (b t) ...') for k, v in batch.items()}
  cond = cond_lib.Conditioner(cfg, vae, clip)(rows)  # key=None: no CFG dropout at sampling
  c = cond_lib.append_camera(cond, network.embed_camera(cond['camera']))
  uc = cond_lib.unconditional(c)
  if diff_cfg.sampler.s_churn:
    raise ValueError('evaluation sampling uses s_churn = 0 (the reference sampler settings, §2.4)')
  network_fn = network_fn_from_unet(network.unet)

  def one(keys_s):  # [B, 2] → [B, T, H, W, 3]
    z = sampler_lib.sample_latents(network_fn, c, uc, keys_s, diff_cfg, t)
    video = sampler_lib.decode_latents(vae, z, t, min(int(diff_cfg.decode.chunk_size), t))
    return einops.rearrange(video, '(b t) h w c -> b t h w c', b=b)

  out = jax.lax.map(one, jnp.swapaxes(keys, 0, 1))  # [S, B, T, H, W, 3]
  return jnp.swapaxes(out, 0, 1)


@functools.partial(jax.jit, static_argnames=('graphdef', 'cfg_json', 'diff_json', 'mesh'))
def _sample_jit(state, batch, keys, *, graphdef, cfg_json, diff_json, mesh=None):
  """Module-level jit: generators with equal model structure, settings and shapes share one compile. The
  attention implementation is the model config's (gcd_jax/models/attention.py), per device over `mesh`'s
  'data' rows."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  from gcd_jax.models import attention  # pylint: disable=g-import-not-at-top
  cfg = ml_collections.ConfigDict(json.loads(cfg_json))
  network, vae, clip = nnx.merge(graphdef, state)
  backend = attention.Backend(impl=cfg.get('attention', 'auto'), mesh=mesh, row_axes=('data',) if mesh is not None else ())
  with attention.use_backend(backend):
    return sample_videos(network, vae, clip, batch, keys, cfg, ml_collections.ConfigDict(json.loads(diff_json)))


_ANNOUNCED = set()


class VideoGenerator:
  """Restored GCD model + the jitted sampler over a local 'data' mesh (see module docstring)."""

  def __init__(self, ckpt_dir: str, model_cfg, *, batch_size: int, steps: int = 25, num_samples: int = 2,
               guidance=(1.0, 1.5), decoding_t: int = 14, progress: bool = True):
    import jax  # pylint: disable=g-import-not-at-top
    from flax import nnx  # pylint: disable=g-import-not-at-top
    from gcd_jax.convert import checkpoint_io  # pylint: disable=g-import-not-at-top
    self.cfg = model_cfg
    self.batch_size = int(batch_size)
    self.num_samples = int(num_samples)
    self.progress = progress
    self.mesh = local_mesh(self.batch_size)
    rep = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())
    self._data = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec('data'))
    modules = checkpoint_io.restore_model_checkpoint(ckpt_dir, model_cfg, shardings=rep)
    self._graphdef, self._state = nnx.split(tuple(modules))
    from gcd_jax.diffusion.config import diffusion_config  # pylint: disable=g-import-not-at-top
    diff_cfg = diffusion_config()
    diff_cfg.sampler.num_steps = int(steps)
    diff_cfg.guider.min_scale, diff_cfg.guider.max_scale = float(guidance[0]), float(guidance[1])
    diff_cfg.decode.chunk_size = int(decoding_t)
    self._steps = int(steps)
    self._static = dict(graphdef=self._graphdef, cfg_json=model_cfg.to_json(sort_keys=True),
                        diff_json=diff_cfg.to_json(sort_keys=True), mesh=self.mesh)

  def __call__(self, examples, keys) -> np.ndarray:
    """examples: list (≤ batch_size) of per-video dicts [T, ...]; keys uint32 [len(examples), S, 2] →
    float32 [len(examples), S, T, H, W, 3] in [0, 1]."""
    import jax  # pylint: disable=g-import-not-at-top
    batch, n = stack_examples(examples, self.batch_size)
    keys = np.asarray(keys, np.uint32)
    if keys.shape != (n, self.num_samples, 2):
      raise ValueError(f'keys must be [{n}, {self.num_samples}, 2], got {keys.shape}')
    keys = np.concatenate([keys, np.repeat(keys[-1:], self.batch_size - n, 0)], 0)
    batch = {k: jax.device_put(v, self._data) for k, v in batch.items()}
    # One jitted call per sample index (compiled once): a progress bar over samples, same numbers.
    outs = []
    from gcd_jax import progress as progress_lib  # pylint: disable=g-import-not-at-top
    bar = progress_lib.bar(self.num_samples, enabled=self.progress and self.num_samples > 1, desc='sampling',
                           unit='sample', leave=False)
    signature = (self._static['cfg_json'], self._static['diff_json'], tuple(batch['cond_frames'].shape))
    if signature not in _ANNOUNCED:  # once per program (the jit is module-level: generators share it)
      t = batch['cond_frames'].shape[1]
      print(f'[gcd-jax] compiling the sampler ({self.batch_size} video(s) × {t} frames, {self._steps} steps with '
            'guidance, VAE decode); the persistent compilation cache reuses it on later runs', flush=True)
      _ANNOUNCED.add(signature)
    for s in range(self.num_samples):
      outs.append(np.asarray(_sample_jit(self._state, batch, jax.device_put(keys[:, s:s + 1], self._data),
                                         **self._static)))
      if bar is not None:
        bar.update(1)
    if bar is not None:
      bar.close()
    return np.concatenate(outs, axis=1)[:n]
