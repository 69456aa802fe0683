"""Model loading and batched video generation shared by `gcd-jax evaluate` and `gcd-jax sample`.

`VideoGenerator(checkpoint, model_cfg, ...)` restores the network / VAE / CLIP of a gcd-jax model
checkpoint onto the local devices (parameters replicated, videos sharded over a 1-D 'data' mesh) and
maps a batch of §4.10 conditioning dicts to sampled videos in [0, 1]:

  gen(examples: list of per-video dicts [T, ...], keys: uint32 [B, S, 2]) → float32 [B, S, T, H, W, 3]

Each (video, sample) gets its own key, so results do not depend on how videos are batched.
"""

from __future__ import annotations

import json
import math
import os
from typing import Sequence

import numpy as np

COND_KEYS = ('cond_frames_without_noise', 'cond_frames', 'fps_id', 'motion_bucket_id', 'cond_aug',
             'scaled_relative_angles', 'scaled_relative_pose')
# Config fields that decide parameter shapes: a checkpoint restored with another config fails.
SHAPE_FIELDS = ('unet', 'camera', 'vae', 'clip')


class ModelConfigError(ValueError):
  """--config does not fit the checkpoint (or is not a model/training config)."""


def _load_config_file(path: str, arg: str | None):
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location(f'_gcd_cfg_{abs(hash(path))}', path)
  if spec is None or spec.loader is None:
    raise ModelConfigError(f'cannot import config file {path}')
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  if not hasattr(mod, 'get_config'):
    raise ModelConfigError(f'{path} has no get_config()')
  return mod.get_config(arg) if arg else mod.get_config()


def resolve_config(spec: str):
  """--config → (model config, training config or None).

  spec: a model preset ('tiny', 'gcd,dtype=bfloat16'), 'configs/models.py:PRESET', or a training config
  'configs/gcd.py[:ARG]' whose get_config returns a ConfigDict with `.model` (and usually `.data`).
  """
  path, _, arg = spec.partition(':')
  if path.endswith('.py'):
    if not os.path.exists(path):
      raise ModelConfigError(f'config file {path} not found')
    if os.path.basename(path) == 'models.py':
      from configs import models  # pylint: disable=g-import-not-at-top
      return models.get_config(arg or None), None
    cfg = _load_config_file(path, arg or None)
    if 'model' in cfg:
      model = cfg.model
      if isinstance(model, str):
        from configs import models  # pylint: disable=g-import-not-at-top
        model = models.get_config(model)
      return model, cfg
    if 'unet' in cfg:
      return cfg, None
    raise ModelConfigError(f'{spec}: neither a model config (.unet) nor a training config (.model)')
  from configs import models  # pylint: disable=g-import-not-at-top
  try:
    return models.get_config(spec), None
  except ValueError as e:
    raise ModelConfigError(str(e)) from e


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
