"""Validation of model configs and helpers that read them (dtypes, per-block GroupNorm eps)."""

from __future__ import annotations

import jax.numpy as jnp
import ml_collections

_ALLOWED = {
    '': {'name', 'unet', 'camera', 'vae', 'clip', 'num_frames', 'dtype', 'param_dtype', 'remat', 'attention'},
    'unet': {'in_channels', 'out_channels', 'model_channels', 'channel_mult', 'num_res_blocks',
             'attention_resolutions', 'num_head_channels', 'transformer_depth', 'context_dim',
             'addition_time_embed_dim', 'adm_in_channels', 'aux_emb_dim', 'num_groups',
             'resblock_norm_eps', 'transformer_norm_eps', 'out_norm_eps', 'layer_norm_eps', 'zero_init'},
    'camera': {'embedder', 'embed_dim'},
    'vae': {'in_channels', 'out_channels', 'block_out_channels', 'layers_per_block', 'latent_channels',
            'num_groups', 'scaling_factor', 'decode_chunk_size'},
    'clip': {'hidden_size', 'num_layers', 'num_heads', 'intermediate_size', 'patch_size', 'image_size',
             'projection_dim', 'layer_norm_eps', 'hidden_act'},
}
_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float16': jnp.float16}
REMAT_POLICIES = ('none', 'full', 'dots')


class ConfigError(ValueError):
  """A model config that cannot describe a valid network."""


def dtype_of(name: str):
  if name not in _DTYPES:
    raise ConfigError(f'unknown dtype {name!r}; use one of {sorted(_DTYPES)}')
  return _DTYPES[name]


def validate_model_config(cfg: ml_collections.ConfigDict) -> None:
  """Raises ConfigError naming every problem (unknown keys, indivisible channels, bad options)."""
  problems = []
  for section, allowed in _ALLOWED.items():
    sub = cfg if not section else cfg.get(section)
    if sub is None:
      problems.append(f'missing section `{section}`')
      continue
    unknown = sorted(set(sub.keys()) - allowed)
    if unknown:
      where = f'`{section}.`' if section else 'the top level'
      problems.append(f'unknown key(s) {unknown} in {where}; allowed: {sorted(allowed)}')
  if problems:
    raise ConfigError('invalid model config: ' + '; '.join(problems))

  u, v, c = cfg.unet, cfg.vae, cfg.clip
  # Block counts and widths: a zero or empty one builds a network that fails only inside the first trace, with
  # a shape error that names none of these fields.
  for name, value in (('unet.model_channels', u.model_channels), ('unet.num_res_blocks', u.num_res_blocks),
                      ('unet.transformer_depth', u.transformer_depth), ('vae.layers_per_block', v.layers_per_block),
                      ('vae.latent_channels', v.latent_channels), ('clip.num_layers', c.num_layers)):
    if not (isinstance(value, int) and value >= 1):
      problems.append(f'{name}={value!r} must be an integer ≥ 1')
  for name, values in (('unet.channel_mult', u.channel_mult), ('vae.block_out_channels', v.block_out_channels)):
    if not values or not all(isinstance(x, int) and x >= 1 for x in values):
      problems.append(f'{name}={tuple(values)!r} must be a non-empty tuple of integers ≥ 1, e.g. (1, 2)')
  if problems:
    raise ConfigError('invalid model config: ' + '; '.join(problems))
  for ch in [u.model_channels * m for m in u.channel_mult]:
    if ch % u.num_groups:
      problems.append(f'U-Net channels {ch} not divisible by num_groups={u.num_groups}')
    if ch % u.num_head_channels:
      problems.append(f'U-Net channels {ch} not divisible by num_head_channels={u.num_head_channels}')
  if u.adm_in_channels != 3 * u.addition_time_embed_dim:
    problems.append(f'unet.adm_in_channels={u.adm_in_channels} must equal 3 × addition_time_embed_dim '
                    f'({3 * u.addition_time_embed_dim}): y = [fps | motion bucket | cond_aug] sinusoids')
  if cfg.camera.embedder not in ('spherical', 'pose', 'none'):
    problems.append(f"camera.embedder={cfg.camera.embedder!r}; use 'spherical', 'pose' or 'none'")
  expected_aux = 0 if cfg.camera.embedder == 'none' else cfg.camera.embed_dim
  if u.aux_emb_dim != expected_aux:
    problems.append(f'unet.aux_emb_dim={u.aux_emb_dim} must equal the camera embedding width '
                    f'{expected_aux} (camera.embedder={cfg.camera.embedder!r})')
  eps = u.resblock_norm_eps
  if not (isinstance(eps, float) or eps in ('sgm', 'diffusers')):
    try:
      float(eps)
    except (TypeError, ValueError):
      problems.append(f"unet.resblock_norm_eps={eps!r}; use 'sgm', 'diffusers' or a float")
  for ch in v.block_out_channels:
    if ch % v.num_groups:
      problems.append(f'VAE channels {ch} not divisible by num_groups={v.num_groups}')
  if c.hidden_size % c.num_heads:
    problems.append(f'CLIP hidden_size {c.hidden_size} not divisible by num_heads={c.num_heads}')
  if c.image_size % c.patch_size:
    problems.append(f'CLIP image_size {c.image_size} not divisible by patch_size={c.patch_size}')
  if cfg.remat not in REMAT_POLICIES:
    problems.append(f'remat={cfg.remat!r}; use one of {REMAT_POLICIES}')
  from gcd_jax.models.attention import IMPLEMENTATIONS  # pylint: disable=g-import-not-at-top
  if cfg.get('attention', 'auto') not in IMPLEMENTATIONS:
    problems.append(f'attention={cfg.attention!r}; use one of {IMPLEMENTATIONS}')
  elif cfg.get('attention') == 'fused':  # asked for by name: build the C++ kernel now, before any output exists
    from gcd_jax.models import cpu_attention  # pylint: disable=g-import-not-at-top
    try:
      cpu_attention.require()
    except cpu_attention.BuildError as e:
      problems.append(str(e))
  for key in ('dtype', 'param_dtype'):
    if cfg[key] not in _DTYPES:
      problems.append(f'{key}={cfg[key]!r}; use one of {sorted(_DTYPES)}')
  if problems:
    raise ConfigError('invalid model config: ' + '; '.join(problems))


def resblock_norm_eps(cfg_unet: ml_collections.ConfigDict, location: str, level: int) -> float:
  """GroupNorm eps for the ResBlocks of one U-Net block.

  location: 'down' | 'mid' | 'up'; level: diffusers block index (down_blocks.i / up_blocks.i).
  'sgm' → 1e-5 everywhere (reference). 'diffusers' → 1e-6 in down_blocks.0..n-2 and every up block,
  1e-5 in the last down block and the mid block (docs/weights.md §0, §5).
  """
  eps = cfg_unet.resblock_norm_eps
  if eps == 'sgm':
    return 1e-5
  if eps == 'diffusers':
    n_levels = len(cfg_unet.channel_mult)
    if location == 'mid' or (location == 'down' and level == n_levels - 1):
      return 1e-5
    return 1e-6
  return float(eps)
