"""sgm (Stability `svd.safetensors`, GCD `.ckpt`) key names ⇄ our (diffusers / transformers) key names.

Our modules carry diffusers / transformers names (`torch_layout.py`), so converting the sgm format is a
pure renaming plus four tiny, exactly invertible tensor transforms (docs/weights.md §3, §4):

| transform      | sgm tensor(s)                         | our tensor(s)                        |
|----------------|---------------------------------------|--------------------------------------|
| `identity`     | x                                     | x                                    |
| `squeeze_1x1`  | VAE mid-attention 1×1 conv (C, C, 1, 1) | Linear (C, C)                        |
| `transpose`    | open_clip `proj` (width, proj_dim)    | `visual_projection.weight` (proj_dim, width) |
| `split_qkv`    | open_clip `attn.in_proj_*` (3C, ...)  | `self_attn.{q,k,v}_proj.*` (C, ...), in q, k, v order |

Every transform only reshapes / slices / transposes, so sgm → ours → sgm is bit-exact.

Our side is named per component of the converted checkpoint (`checkpoint_io.py`):
* `network`: `unet.<diffusers U-Net key>` (+ `unet.aux_label_emb.linear_{1,2}`) and
  `camera_embedder.proj.*` (GCDNetwork),
* `vae`: diffusers `AutoencoderKLTemporalDecoder` keys (`encoder.*`, `quant_conv.*`, `decoder.*`),
* `clip`: transformers `CLIPVisionModelWithProjection` keys (`vision_model.*`, `visual_projection.*`).

sgm side (full keys, prefixes of docs/weights.md §2a):
* `model.diffusion_model.*` → network `unet.*`; `conditioner.embedders.5.proj.*` → `camera_embedder.proj.*`;
* `conditioner.embedders.3.encoder.{encoder,quant_conv}.*` → vae `encoder.*` / `quant_conv.*` (the encoder
  of the conditioning frame, docs/reference.md §6 item 4); `first_stage_model.decoder.*` → vae `decoder.*`;
* `first_stage_model.encoder.*` (the target-path encoder) holds the same weights in SVD / GCD: it is
  written on export (`SGM_DUPLICATES`) and on import only compared against the conditioning copy;
* `conditioner.embedders.0.open_clip.model.visual.*` → clip.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

UNET_PREFIX = 'model.diffusion_model.'
CAMERA_PREFIX = 'conditioner.embedders.5.'
COND_VAE_PREFIX = 'conditioner.embedders.3.encoder.'
FIRST_STAGE_PREFIX = 'first_stage_model.'
CLIP_PREFIX = 'conditioner.embedders.0.open_clip.model.visual.'

# sgm keys a model never reads; dropped on import (and not written on export). Globs (fnmatch).
SGM_IGNORED = (
    # Unused 2-D decoder of the conditioning autoencoder (AutoencoderKLModeOnly), docs/weights.md §2a.
    'conditioner.embedders.3.encoder.decoder.*',
    'conditioner.embedders.3.encoder.post_quant_conv.*',
    # The target path (first_stage_model, AutoencodingEngine) has no quant convs; if a file has them,
    # sgm ignores them too (docs/reference.md §6 item 4).
    'first_stage_model.quant_conv.*',
    'first_stage_model.post_quant_conv.*',
    # Leftovers of the OpenCLIP text tower (the image tower is all SVD uses).
    'conditioner.embedders.0.open_clip.model.transformer.*',
    'conditioner.embedders.0.open_clip.model.token_embedding.*',
    'conditioner.embedders.0.open_clip.model.positional_embedding',
    'conditioner.embedders.0.open_clip.model.ln_final.*',
    'conditioner.embedders.0.open_clip.model.text_projection',
    'conditioner.embedders.0.open_clip.model.logit_scale',
    'conditioner.embedders.0.open_clip.model.attn_mask',
)
# Extra keys of a GCD Lightning checkpoint's state_dict: the LPIPS metric net of DiffusionEngine
# (only the disabled validation step uses it) and EMA weights (off in all GCD configs; warned about).
CKPT_IGNORED = ('lpips.*',)
CKPT_EMA = ('model_ema.*',)


# ---------------------------------------------------------------------------------------------------
# Tensor transforms


@dataclasses.dataclass(frozen=True)
class Transform:
  """A bijection between n sgm tensors and m of ours (both in PyTorch layout)."""
  name: str
  to_ours: Callable[[Sequence[np.ndarray]], list[np.ndarray]]
  to_sgm: Callable[[Sequence[np.ndarray]], list[np.ndarray]]
  sgm_shapes: Callable[[Sequence[tuple[int, ...]]], list[tuple[int, ...]]]  # from our shapes


IDENTITY = Transform('identity', lambda a: [a[0]], lambda a: [a[0]], lambda s: [tuple(s[0])])
SQUEEZE_1X1 = Transform(
    'squeeze_1x1',
    lambda a: [a[0].reshape(a[0].shape[:2])],
    lambda a: [a[0].reshape(a[0].shape + (1, 1))],
    lambda s: [tuple(s[0]) + (1, 1)])
TRANSPOSE = Transform(
    'transpose',
    lambda a: [np.ascontiguousarray(a[0].T)],
    lambda a: [np.ascontiguousarray(a[0].T)],
    lambda s: [tuple(s[0])[::-1]])


def _split3(a):
  x = a[0]
  if x.shape[0] % 3:
    raise ValueError(f'in_proj tensor of shape {x.shape}: first dim is not divisible by 3')
  return [np.ascontiguousarray(p) for p in np.split(x, 3, axis=0)]


SPLIT_QKV = Transform(
    'split_qkv', _split3, lambda a: [np.concatenate(list(a), axis=0)],
    lambda s: [(3 * s[0][0],) + tuple(s[0][1:])])


@dataclasses.dataclass(frozen=True)
class TensorMap:
  """sgm keys ⇄ our keys of one component, related by `transform`."""
  component: str  # 'network' | 'vae' | 'clip'
  sgm: tuple[str, ...]
  ours: tuple[str, ...]
  transform: Transform = IDENTITY


# ---------------------------------------------------------------------------------------------------
# U-Net (docs/weights.md §3)


@dataclasses.dataclass(frozen=True)
class UNetLayout:
  """What the input_blocks / output_blocks index arithmetic needs from the config."""
  num_levels: int
  num_res_blocks: int
  attn_levels: tuple[bool, ...]  # per level ℓ (down_blocks.ℓ, up_blocks.(L-1-ℓ))

  @classmethod
  def from_config(cls, cfg_unet) -> 'UNetLayout':
    n = len(cfg_unet.channel_mult)
    return cls(n, int(cfg_unet.num_res_blocks),
               tuple(2 ** lvl in tuple(cfg_unet.attention_resolutions) for lvl in range(n)))


_UNET_TOP = {  # ours → sgm (prefix of the rest of the key)
    'time_embedding.linear_1.': 'time_embed.0.',
    'time_embedding.linear_2.': 'time_embed.2.',
    'add_embedding.linear_1.': 'label_emb.0.0.',
    'add_embedding.linear_2.': 'label_emb.0.2.',
    'aux_label_emb.linear_1.': 'aux_label_emb.0.',  # GCD camera MLP (docs/reference.md §1.5)
    'aux_label_emb.linear_2.': 'aux_label_emb.2.',
    'conv_in.': 'input_blocks.0.0.',
    'conv_norm_out.': 'out.0.',
    'conv_out.': 'out.2.',
}
_UNET_RESBLOCK = {  # VideoResBlock (sgm) ⇄ SpatioTemporalResBlock (diffusers)
    'spatial_res_block.norm1.': 'in_layers.0.',
    'spatial_res_block.conv1.': 'in_layers.2.',
    'spatial_res_block.time_emb_proj.': 'emb_layers.1.',
    'spatial_res_block.norm2.': 'out_layers.0.',
    'spatial_res_block.conv2.': 'out_layers.3.',
    'spatial_res_block.conv_shortcut.': 'skip_connection.',
    'temporal_res_block.norm1.': 'time_stack.in_layers.0.',
    'temporal_res_block.conv1.': 'time_stack.in_layers.2.',
    'temporal_res_block.time_emb_proj.': 'time_stack.emb_layers.1.',
    'temporal_res_block.norm2.': 'time_stack.out_layers.0.',
    'temporal_res_block.conv2.': 'time_stack.out_layers.3.',
    'time_mixer.': 'time_mixer.',
}
_UNET_TRANSFORMER = {  # SpatialVideoTransformer ⇄ TransformerSpatioTemporalModel; the rest is equal
    'temporal_transformer_blocks.': 'time_stack.',
    'time_pos_embed.linear_1.': 'time_pos_embed.0.',
    'time_pos_embed.linear_2.': 'time_pos_embed.2.',
}


def _sub_prefix(rest: str, table: Mapping[str, str], *, default_identity: bool) -> str | None:
  for a, b in table.items():
    if rest.startswith(a):
      return b + rest[len(a):]
  return rest if default_identity else None


def _inverse(table: Mapping[str, str]) -> dict[str, str]:
  # Longest first so that e.g. 'time_stack.in_layers.0.' wins over a shorter prefix.
  return dict(sorted(((b, a) for a, b in table.items()), key=lambda kv: -len(kv[0])))


_UNET_TOP_INV = _inverse(_UNET_TOP)
_UNET_RESBLOCK_INV = _inverse(_UNET_RESBLOCK)
_UNET_TRANSFORMER_INV = _inverse(_UNET_TRANSFORMER)


def unet_key_to_sgm(key: str, layout: UNetLayout) -> str | None:
  """diffusers U-Net key (no prefix) → sgm key under `model.diffusion_model.` (None: not a U-Net key)."""
  top = _sub_prefix(key, _UNET_TOP, default_identity=False)
  if top is not None:
    return top
  n1 = layout.num_res_blocks + 1
  m = re.fullmatch(r'down_blocks\.(\d+)\.(resnets|attentions|downsamplers)\.(\d+)\.(.+)', key)
  if m:
    lvl, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
    if kind == 'downsamplers':
      return f'input_blocks.{1 + lvl * n1 + layout.num_res_blocks}.0.op.{rest[len("conv."):]}' \
          if rest.startswith('conv.') and j == 0 else None
    k = 1 + lvl * n1 + j
    return _block(k, kind, rest)
  m = re.fullmatch(r'mid_block\.(resnets|attentions)\.(\d+)\.(.+)', key)
  if m:
    kind, j, rest = m[1], int(m[2]), m[3]
    idx = {('resnets', 0): 0, ('attentions', 0): 1, ('resnets', 1): 2}.get((kind, j))
    return None if idx is None else _block_sub(f'middle_block.{idx}.', kind, rest)
  m = re.fullmatch(r'up_blocks\.(\d+)\.(resnets|attentions|upsamplers)\.(\d+)\.(.+)', key)
  if m:
    i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
    if kind == 'upsamplers':
      if j or not rest.startswith('conv.'):
        return None
      slot = 2 if layout.attn_levels[layout.num_levels - 1 - i] else 1
      return f'output_blocks.{i * n1 + layout.num_res_blocks}.{slot}.{rest}'
    return _block(i * n1 + j, kind, rest, 'output_blocks')
  return None


def _block(k: int, kind: str, rest: str, name: str = 'input_blocks') -> str | None:
  return _block_sub(f'{name}.{k}.{0 if kind == "resnets" else 1}.', kind, rest)


def _block_sub(prefix: str, kind: str, rest: str) -> str | None:
  if kind == 'resnets':
    sub = _sub_prefix(rest, _UNET_RESBLOCK, default_identity=False)
  else:
    sub = _sub_prefix(rest, _UNET_TRANSFORMER, default_identity=True)
  return None if sub is None else prefix + sub


def unet_key_from_sgm(key: str, layout: UNetLayout) -> str | None:
  """sgm key (without `model.diffusion_model.`) → diffusers U-Net key (None: not a U-Net key)."""
  top = _sub_prefix(key, _UNET_TOP_INV, default_identity=False)
  if top is not None:
    return top
  n1 = layout.num_res_blocks + 1
  m = re.fullmatch(r'input_blocks\.(\d+)\.(\d+)\.(.+)', key)
  if m:
    k, s, rest = int(m[1]), int(m[2]), m[3]
    if k == 0:
      return None  # input_blocks.0.0 is conv_in, handled by the top-level table
    lvl, j = divmod(k - 1, n1)
    if lvl >= layout.num_levels:
      return None
    if j == layout.num_res_blocks:
      if s == 0 and rest.startswith('op.') and lvl < layout.num_levels - 1:
        return f'down_blocks.{lvl}.downsamplers.0.conv.{rest[3:]}'
      return None
    if s == 0:
      return _unblock(f'down_blocks.{lvl}.resnets.{j}.', 'resnets', rest)
    if s == 1 and layout.attn_levels[lvl]:
      return _unblock(f'down_blocks.{lvl}.attentions.{j}.', 'attentions', rest)
    return None
  m = re.fullmatch(r'middle_block\.(\d)\.(.+)', key)
  if m:
    which = {0: ('resnets', 0), 1: ('attentions', 0), 2: ('resnets', 1)}.get(int(m[1]))
    if which is None:
      return None
    return _unblock(f'mid_block.{which[0]}.{which[1]}.', which[0], m[2])
  m = re.fullmatch(r'output_blocks\.(\d+)\.(\d+)\.(.+)', key)
  if m:
    k, s, rest = int(m[1]), int(m[2]), m[3]
    i, j = divmod(k, n1)
    if i >= layout.num_levels:
      return None
    has_attn = layout.attn_levels[layout.num_levels - 1 - i]
    if s == 0:
      return _unblock(f'up_blocks.{i}.resnets.{j}.', 'resnets', rest)
    if s == 1 and has_attn:
      return _unblock(f'up_blocks.{i}.attentions.{j}.', 'attentions', rest)
    if (s == (2 if has_attn else 1) and j == layout.num_res_blocks and i < layout.num_levels - 1
        and rest.startswith('conv.')):
      return f'up_blocks.{i}.upsamplers.0.{rest}'
    return None
  return None


def _unblock(prefix: str, kind: str, rest: str) -> str | None:
  if kind == 'resnets':
    sub = _sub_prefix(rest, _UNET_RESBLOCK_INV, default_identity=False)
  else:
    sub = _sub_prefix(rest, _UNET_TRANSFORMER_INV, default_identity=True)
  return None if sub is None else prefix + sub


# ---------------------------------------------------------------------------------------------------
# VAE (docs/weights.md §4). sgm `up.ℓ` ⇄ diffusers `up_blocks.(L-1-ℓ)`.

_VAE_RES_2D = {'norm1.': 'norm1.', 'conv1.': 'conv1.', 'norm2.': 'norm2.', 'conv2.': 'conv2.',
               'conv_shortcut.': 'nin_shortcut.'}
_VAE_RES_VIDEO = {
    'spatial_res_block.norm1.': 'norm1.', 'spatial_res_block.conv1.': 'conv1.',
    'spatial_res_block.norm2.': 'norm2.', 'spatial_res_block.conv2.': 'conv2.',
    'spatial_res_block.conv_shortcut.': 'nin_shortcut.',
    'temporal_res_block.norm1.': 'time_stack.in_layers.0.',
    'temporal_res_block.conv1.': 'time_stack.in_layers.2.',
    'temporal_res_block.norm2.': 'time_stack.out_layers.0.',
    'temporal_res_block.conv2.': 'time_stack.out_layers.3.',
    'time_mixer.mix_factor': 'mix_factor',
}
_VAE_ATTN = {'group_norm.': 'norm.', 'to_q.': 'q.', 'to_k.': 'k.', 'to_v.': 'v.', 'to_out.0.': 'proj_out.'}
_VAE_RES_2D_INV, _VAE_RES_VIDEO_INV, _VAE_ATTN_INV = (
    _inverse(_VAE_RES_2D), _inverse(_VAE_RES_VIDEO), _inverse(_VAE_ATTN))


def _vae_common(rest: str, res: Mapping[str, str]) -> tuple[str, Transform] | None:
  """mid block / norm_out / conv_in, shared by encoder and decoder (ours → sgm)."""
  if rest.startswith(('conv_in.',)):
    return rest, IDENTITY
  if rest.startswith('conv_norm_out.'):
    return 'norm_out.' + rest[len('conv_norm_out.'):], IDENTITY
  m = re.fullmatch(r'mid_block\.resnets\.([01])\.(.+)', rest)
  if m:
    sub = _sub_prefix(m[2], res, default_identity=False)
    return (None if sub is None else (f'mid.block_{int(m[1]) + 1}.{sub}', IDENTITY))
  m = re.fullmatch(r'mid_block\.attentions\.0\.(.+)', rest)
  if m:
    sub = _sub_prefix(m[1], _VAE_ATTN, default_identity=False)
    if sub is None:
      return None
    # 1×1 conv q/k/v/proj_out weights in sgm, Linear in diffusers.
    squeeze = sub.endswith('.weight') and not sub.startswith('norm.')
    return 'mid.attn_1.' + sub, SQUEEZE_1X1 if squeeze else IDENTITY
  return None


def vae_key_to_sgm(key: str, num_levels: int) -> tuple[str, Transform] | None:
  """diffusers AutoencoderKLTemporalDecoder key → (sgm key with prefix, transform); None if unknown.

  The encoder maps to the conditioning copy `conditioner.embedders.3.encoder.encoder.*`
  (see `SGM_DUPLICATES` for `first_stage_model.encoder.*`).
  """
  if key.startswith('quant_conv.'):
    return COND_VAE_PREFIX + key, IDENTITY
  if key.startswith('encoder.'):
    rest = key[len('encoder.'):]
    common = _vae_common(rest, _VAE_RES_2D)
    if common is None and rest.startswith('conv_out.'):
      common = rest, IDENTITY
    if common is None:
      m = re.fullmatch(r'down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)', rest)
      if m:
        sub = _sub_prefix(m[3], _VAE_RES_2D, default_identity=False)
        common = None if sub is None else (f'down.{m[1]}.block.{m[2]}.{sub}', IDENTITY)
      m = re.fullmatch(r'down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)', rest)
      if m:
        common = f'down.{m[1]}.downsample.conv.{m[2]}', IDENTITY
    return None if common is None else (COND_VAE_PREFIX + 'encoder.' + common[0], common[1])
  if key.startswith('decoder.'):
    rest = key[len('decoder.'):]
    common = _vae_common(rest, _VAE_RES_VIDEO)
    if common is None and rest.startswith('conv_out.'):
      common = rest, IDENTITY
    if common is None and rest.startswith('time_conv_out.'):
      common = 'conv_out.time_mix_conv.' + rest[len('time_conv_out.'):], IDENTITY
    if common is None:
      m = re.fullmatch(r'up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)', rest)
      if m:
        sub = _sub_prefix(m[3], _VAE_RES_VIDEO, default_identity=False)
        common = (None if sub is None else
                  (f'up.{num_levels - 1 - int(m[1])}.block.{m[2]}.{sub}', IDENTITY))
      m = re.fullmatch(r'up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)', rest)
      if m:
        common = f'up.{num_levels - 1 - int(m[1])}.upsample.conv.{m[2]}', IDENTITY
    return None if common is None else (FIRST_STAGE_PREFIX + 'decoder.' + common[0], common[1])
  return None


def vae_key_from_sgm(key: str, num_levels: int) -> str | None:
  """sgm key (full) → diffusers VAE key; accepts both encoder copies. None if not a VAE key we hold."""
  if key.startswith(COND_VAE_PREFIX + 'quant_conv.'):
    return key[len(COND_VAE_PREFIX):]
  for prefix in (COND_VAE_PREFIX + 'encoder.', FIRST_STAGE_PREFIX + 'encoder.'):
    if key.startswith(prefix):
      rest = key[len(prefix):]
      out = _vae_common_inv(rest, _VAE_RES_2D_INV)
      if out is None and rest.startswith('conv_out.'):
        out = rest
      if out is None:
        m = re.fullmatch(r'down\.(\d+)\.block\.(\d+)\.(.+)', rest)
        if m:
          sub = _sub_prefix(m[3], _VAE_RES_2D_INV, default_identity=False)
          out = None if sub is None else f'down_blocks.{m[1]}.resnets.{m[2]}.{sub}'
        m = re.fullmatch(r'down\.(\d+)\.downsample\.conv\.(.+)', rest)
        if m:
          out = f'down_blocks.{m[1]}.downsamplers.0.conv.{m[2]}'
      return None if out is None else 'encoder.' + out
  if key.startswith(FIRST_STAGE_PREFIX + 'decoder.'):
    rest = key[len(FIRST_STAGE_PREFIX + 'decoder.'):]
    out = _vae_common_inv(rest, _VAE_RES_VIDEO_INV)
    if out is None and rest.startswith('conv_out.time_mix_conv.'):
      out = 'time_conv_out.' + rest[len('conv_out.time_mix_conv.'):]
    elif out is None and rest.startswith('conv_out.'):
      out = rest
    if out is None:
      m = re.fullmatch(r'up\.(\d+)\.block\.(\d+)\.(.+)', rest)
      if m:
        sub = _sub_prefix(m[3], _VAE_RES_VIDEO_INV, default_identity=False)
        out = None if sub is None else f'up_blocks.{num_levels - 1 - int(m[1])}.resnets.{m[2]}.{sub}'
      m = re.fullmatch(r'up\.(\d+)\.upsample\.conv\.(.+)', rest)
      if m:
        out = f'up_blocks.{num_levels - 1 - int(m[1])}.upsamplers.0.conv.{m[2]}'
    return None if out is None else 'decoder.' + out
  return None


def _vae_common_inv(rest: str, res_inv: Mapping[str, str]) -> str | None:
  if rest.startswith('conv_in.'):
    return rest
  if rest.startswith('norm_out.'):
    return 'conv_norm_out.' + rest[len('norm_out.'):]
  m = re.fullmatch(r'mid\.block_([12])\.(.+)', rest)
  if m:
    sub = _sub_prefix(m[2], res_inv, default_identity=False)
    return None if sub is None else f'mid_block.resnets.{int(m[1]) - 1}.{sub}'
  m = re.fullmatch(r'mid\.attn_1\.(.+)', rest)
  if m:
    sub = _sub_prefix(m[1], _VAE_ATTN_INV, default_identity=False)
    return None if sub is None else f'mid_block.attentions.0.{sub}'
  return None


# ---------------------------------------------------------------------------------------------------
# CLIP image tower: open_clip `visual` ⇄ transformers CLIPVisionModelWithProjection (docs/weights.md §4)

_CLIP_TOP = {
    'vision_model.embeddings.patch_embedding.weight': 'conv1.weight',
    'vision_model.embeddings.class_embedding': 'class_embedding',
    'vision_model.embeddings.position_embedding.weight': 'positional_embedding',
    'vision_model.pre_layrnorm.': 'ln_pre.',
    'vision_model.post_layernorm.': 'ln_post.',
}
_CLIP_LAYER = {'layer_norm1.': 'ln_1.', 'layer_norm2.': 'ln_2.', 'mlp.fc1.': 'mlp.c_fc.',
               'mlp.fc2.': 'mlp.c_proj.', 'self_attn.out_proj.': 'attn.out_proj.'}
_CLIP_TOP_INV, _CLIP_LAYER_INV = _inverse(_CLIP_TOP), _inverse(_CLIP_LAYER)


def clip_key_to_sgm(key: str) -> tuple[str, Transform] | None:
  """transformers key → (open_clip key with prefix, transform). q/k/v map to `attn.in_proj_*`."""
  if key == 'visual_projection.weight':
    return CLIP_PREFIX + 'proj', TRANSPOSE
  top = _sub_prefix(key, _CLIP_TOP, default_identity=False)
  if top is not None:
    return CLIP_PREFIX + top, IDENTITY
  m = re.fullmatch(r'vision_model\.encoder\.layers\.(\d+)\.(.+)', key)
  if m:
    i, rest = m[1], m[2]
    q = re.fullmatch(r'self_attn\.[qkv]_proj\.(weight|bias)', rest)
    if q:
      return f'{CLIP_PREFIX}transformer.resblocks.{i}.attn.in_proj_{q[1]}', SPLIT_QKV
    sub = _sub_prefix(rest, _CLIP_LAYER, default_identity=False)
    if sub is not None:
      return f'{CLIP_PREFIX}transformer.resblocks.{i}.{sub}', IDENTITY
  return None


def clip_keys_from_sgm(key: str) -> tuple[str, ...] | None:
  """open_clip key (full) → our key(s) (three for in_proj, q, k, v order)."""
  if not key.startswith(CLIP_PREFIX):
    return None
  rest = key[len(CLIP_PREFIX):]
  if rest == 'proj':
    return ('visual_projection.weight',)
  top = _sub_prefix(rest, _CLIP_TOP_INV, default_identity=False)
  if top is not None:
    return (top,)
  m = re.fullmatch(r'transformer\.resblocks\.(\d+)\.(.+)', rest)
  if m:
    i, sub = m[1], m[2]
    q = re.fullmatch(r'attn\.in_proj_(weight|bias)', sub)
    base = f'vision_model.encoder.layers.{i}.self_attn'
    if q:
      return tuple(f'{base}.{p}_proj.{q[1]}' for p in 'qkv')
    ours = _sub_prefix(sub, _CLIP_LAYER_INV, default_identity=False)
    if ours is not None:
      return (f'vision_model.encoder.layers.{i}.{ours}',)
  return None


# ---------------------------------------------------------------------------------------------------
# Whole model


def network_key_to_sgm(key: str, layout: UNetLayout) -> str | None:
  """GCDNetwork key (`unet.*`, `camera_embedder.*`) → full sgm key."""
  if key.startswith('unet.'):
    sub = unet_key_to_sgm(key[len('unet.'):], layout)
    return None if sub is None else UNET_PREFIX + sub
  if key.startswith('camera_embedder.'):
    return CAMERA_PREFIX + key[len('camera_embedder.'):]
  return None


def network_key_from_sgm(key: str, layout: UNetLayout) -> str | None:
  if key.startswith(UNET_PREFIX):
    sub = unet_key_from_sgm(key[len(UNET_PREFIX):], layout)
    return None if sub is None else 'unet.' + sub
  if key.startswith(CAMERA_PREFIX):
    return 'camera_embedder.' + key[len(CAMERA_PREFIX):]
  return None


class MappingError(ValueError):
  """Our model has a parameter the sgm format has no name for (a bug or an unsupported config)."""


def sgm_tensor_maps(our_keys: Mapping[str, Iterable[str]], layout: UNetLayout,
                    vae_levels: int) -> list[TensorMap]:
  """All TensorMaps for a model whose components hold `our_keys` {component: torch-layout keys}.

  Built from our keys (ours → sgm is a function; in_proj groups three of ours into one sgm key).
  Raises MappingError if two of our keys would land on the same sgm tensor or a key has no sgm name.
  """
  maps: list[TensorMap] = []
  unknown = []
  for component, keys in our_keys.items():
    grouped: dict[str, list[str]] = {}
    transform_of: dict[str, Transform] = {}
    for key in keys:
      if component == 'network':
        sgm = network_key_to_sgm(key, layout)
        res = None if sgm is None else (sgm, IDENTITY)
      elif component == 'vae':
        res = vae_key_to_sgm(key, vae_levels)
      elif component == 'clip':
        res = clip_key_to_sgm(key)
      else:
        raise ValueError(f'unknown component {component!r}')
      if res is None:
        unknown.append(f'{component}:{key}')
        continue
      grouped.setdefault(res[0], []).append(key)
      transform_of[res[0]] = res[1]
    for sgm, ours in grouped.items():
      t = transform_of[sgm]
      if t is SPLIT_QKV:
        order = {k.split('.')[-2][0]: k for k in ours}  # q/k/v from '..._proj.weight'
        if sorted(order) != ['k', 'q', 'v']:
          raise MappingError(f'{sgm}: expected q/k/v projections, got {ours}')
        ours = [order['q'], order['k'], order['v']]
      elif len(ours) != 1:
        raise MappingError(f'{sgm}: several of our keys map to it: {ours}')
      maps.append(TensorMap(component, (sgm,), tuple(ours), t))
  if unknown:
    raise MappingError('no sgm name for our parameter(s): ' + ', '.join(unknown[:20]) +
                       (' ...' if len(unknown) > 20 else ''))
  return maps


def sgm_duplicates(maps: Iterable[TensorMap]) -> dict[str, str]:
  """{duplicate sgm key: source sgm key}: `first_stage_model.encoder.*` = the conditioning encoder.

  SVD ships both encoders with the same weights; our model has one encoder, so export writes it twice
  (GCD's target path reads `first_stage_model.encoder`, the conditioning path the other copy).
  """
  src = COND_VAE_PREFIX + 'encoder.'
  out = {}
  for m in maps:
    for k in m.sgm:
      if k.startswith(src):
        out[FIRST_STAGE_PREFIX + 'encoder.' + k[len(src):]] = k
  return out


def diffusers_tensor_maps(our_keys: Mapping[str, Iterable[str]]) -> list[TensorMap]:
  """Our keys ⇄ diffusers pipeline-folder keys `<subfolder>/<key>` (identity: our names are theirs).

  network `unet.*` → `unet/*` (GCD's `aux_label_emb.*` stays in the U-Net file), network
  `camera_embedder.*` → `camera_embedder/*` (a GCD-only folder), vae → `vae/*`, clip → `image_encoder/*`.
  """
  maps = []
  for component, keys in our_keys.items():
    for key in keys:
      if component == 'network':
        head, _, rest = key.partition('.')
        folder = {'unet': 'unet', 'camera_embedder': 'camera_embedder'}.get(head)
        if folder is None:
          raise MappingError(f'network key {key!r} has no diffusers folder')
        maps.append(TensorMap(component, (f'{folder}/{rest}',), (key,)))
      else:
        folder = {'vae': 'vae', 'clip': 'image_encoder'}[component]
        maps.append(TensorMap(component, (f'{folder}/{key}',), (key,)))
  return maps
