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
import os
from typing import Sequence

import jax
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
# The sampling math below follows gcd_spec.md §1.3 (conditioning), §1.7 (unconditional branch), §2.1
# (VScalingWithEDMcNoise preconditioning) and §2.4 (EDM discretisation, Euler, LinearPredictionGuider).


def edm_sigmas(steps: int, sigma_min: float = 0.002, sigma_max: float = 700.0, rho: float = 7.0) -> np.ndarray:
  """§2.4: N Karras sigmas from sigma_max to sigma_min, then 0 appended → [N + 1] float32."""
  i = np.arange(steps, dtype=np.float64)
  lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
  s = (hi + i / max(steps - 1, 1) * (lo - hi)) ** rho
  return np.append(s, 0.0).astype(np.float32)


def conditioning(network, vae, clip, batch: dict, cfg) -> tuple[dict, dict]:
  """§1.3 / §1.7: per-row c and uc. batch arrays [B, T, ...] → dicts with crossattn [B·T, 1, D],
  concat [B·T, h, w, 4] (VAE posterior mean with quant_conv, unscaled), vector [B·T, 768 (+ camera)].
  uc = c with crossattn and concat zeroed; the vector (fps, motion, cond_aug, camera) is shared."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from gcd_jax.models import clip as clip_lib  # pylint: disable=g-import-not-at-top
  from gcd_jax.models.layers import timestep_embedding  # pylint: disable=g-import-not-at-top
  b, t = batch['cond_frames'].shape[:2]
  rows = lambda x: x.reshape((b * t,) + x.shape[2:])
  clean = rows(batch['cond_frames_without_noise'])
  tokens = clip(clip_lib.preprocess_frames_for_clip(clean, cfg.clip.image_size))
  crossattn = tokens.astype(jnp.float32)[:, None, :]
  concat, _ = vae.encode(rows(batch['cond_frames']), use_quant_conv=True)
  e = int(cfg.unet.addition_time_embed_dim)
  vector = [timestep_embedding(rows(batch['fps_id']), e), timestep_embedding(rows(batch['motion_bucket_id']), e),
            timestep_embedding(rows(batch['cond_aug']), e)]
  camera = batch['scaled_relative_pose'] if cfg.camera.embedder == 'pose' else batch['scaled_relative_angles']
  vector.append(network.embed_camera(rows(camera)))
  vector = jnp.concatenate(vector, -1)
  c = {'crossattn': crossattn, 'concat': concat.astype(jnp.float32), 'vector': vector}
  uc = {'crossattn': jnp.zeros_like(crossattn), 'concat': jnp.zeros_like(c['concat']), 'vector': vector}
  return c, uc


def guided_denoise(network, x, sigma, c, uc, scale, num_frames: int):
  """x [N, h, w, 4], sigma scalar, scale [N] → guided x₀ prediction (§2.1, §2.4: one call on [uc; c])."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  n = x.shape[0]
  s2 = sigma * sigma + 1.0
  c_skip, c_out, c_in = 1.0 / s2, -sigma / jnp.sqrt(s2), 1.0 / jnp.sqrt(s2)
  c_noise = jnp.full((2 * n,), 0.25 * jnp.log(sigma), jnp.float32)
  x2 = jnp.concatenate([x, x], 0)
  x_in = jnp.concatenate([x2 * c_in, jnp.concatenate([uc['concat'], c['concat']], 0)], -1)
  context = jnp.concatenate([uc['crossattn'], c['crossattn']], 0)
  y = jnp.concatenate([uc['vector'], c['vector']], 0)
  f = network.unet(x_in, c_noise, context, y, num_frames=num_frames).astype(jnp.float32)
  d = c_skip * x2 + c_out * f
  d_u, d_c = d[:n], d[n:]
  return d_u + scale[:, None, None, None] * (d_c - d_u)


def sample_videos(network, vae, clip, batch: dict, keys, cfg, *, steps: int, guidance, decoding_t: int):
  """batch [B, T, ...], keys uint32 [B, S, 2] → videos [B, S, T, H, W, 3] in [0, 1] (see VideoGenerator)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  b, t, hp, wp = batch['cond_frames'].shape[:4]
  c, uc = conditioning(network, vae, clip, batch, cfg)
  latent_shape = c['concat'].shape[1:]
  sigmas = jnp.asarray(edm_sigmas(steps))
  scale = jnp.tile(jnp.linspace(guidance[0], guidance[1], t, dtype=jnp.float32), b)  # per frame (App. B)

  def one(keys_s):  # [B, 2] → [B, T, H, W, 3]
    noise = jax.vmap(lambda k: jax.random.normal(jax.random.wrap_key_data(k), (t,) + latent_shape))(keys_s)
    x = noise.reshape((b * t,) + latent_shape) * jnp.sqrt(1.0 + sigmas[0] ** 2)

    def step(i, x):
      x0 = guided_denoise(network, x, sigmas[i], c, uc, scale, t)
      return x + (sigmas[i + 1] - sigmas[i]) * (x - x0) / sigmas[i]  # Euler; the last step lands on x₀

    x = jax.lax.fori_loop(0, steps, step, x)
    z = x / cfg.vae.scaling_factor
    frames = vae.decode(z, num_frames=t, chunk_size=min(decoding_t, t)).astype(jnp.float32)
    return jnp.clip((frames + 1.0) / 2.0, 0.0, 1.0).reshape(b, t, hp, wp, 3)

  out = jax.lax.map(one, jnp.swapaxes(keys, 0, 1))  # [S, B, T, H, W, 3]
  return jnp.swapaxes(out, 0, 1)


@functools.partial(jax.jit, static_argnames=('graphdef', 'cfg_json', 'steps', 'guidance', 'decoding_t'))
def _sample_jit(state, batch, keys, *, graphdef, cfg_json, steps, guidance, decoding_t):
  """Module-level jit: generators with equal model structure, settings and shapes share one compile."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  cfg = ml_collections.ConfigDict(json.loads(cfg_json))
  network, vae, clip = nnx.merge(graphdef, state)
  return sample_videos(network, vae, clip, batch, keys, cfg, steps=steps, guidance=guidance,
                       decoding_t=decoding_t)


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
    self._static = dict(graphdef=self._graphdef, cfg_json=model_cfg.to_json(sort_keys=True), steps=int(steps),
                        guidance=(float(guidance[0]), float(guidance[1])), decoding_t=int(decoding_t))

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
    it = range(self.num_samples)
    if self.progress and self.num_samples > 1:
      from tqdm import tqdm  # pylint: disable=g-import-not-at-top
      it = tqdm(it, desc='sampling', unit='sample', leave=False)
    for s in it:
      outs.append(np.asarray(_sample_jit(self._state, batch, jax.device_put(keys[:, s:s + 1], self._data),
                                         **self._static)))
    return np.concatenate(outs, axis=1)[:n]
