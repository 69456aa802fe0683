"""Loading diffusers-format folders (`unet/`, `vae/`, `image_encoder/`: config.json + safetensors).

* `read_safetensors_lazy(path)` → (shapes, getter): reads one tensor at a time (a 6 GB U-Net never sits
  in RAM twice); `path` is a `.safetensors` file, a sharded `*.safetensors.index.json`, or a folder.
* `load_diffusers_component(folder, module, ...)` copies every tensor into an NNX module (names are
  diffusers' own, see `torch_layout.py`), raising `WeightLoadError` listing missing / unexpected /
  mis-shaped keys. Non-parameter buffers that some writers store (transformers' CLIP
  `vision_model.embeddings.position_ids`) are dropped through the explicit `ignore` globs.
* `load_diffusers_unet(folder, cfg)` checks `unet/config.json` against the model config first (naming
  every differing field), then loads into an abstract (`nnx.eval_shape`) VideoUNet, so the weights are
  allocated once.
* `diffusers_unet_config(cfg)` is the diffusers `UNetSpatioTemporalConditionModel` config of a model
  config (also used by the parity tests and the benchmark to build the PyTorch reference).
"""

from __future__ import annotations

import fnmatch
import json
import os
from typing import Callable, Iterable

import ml_dtypes
import ml_collections
import numpy as np
from flax import nnx

from gcd_jax.convert.torch_layout import WeightLoadError, load_torch_state

# Weight file names tried in order (diffusers, then transformers), sharded index files included.
WEIGHT_NAMES = ('diffusion_pytorch_model.safetensors', 'model.safetensors')


class DiffusersConfigError(ValueError):
  """A diffusers config.json that does not describe the network of the model config."""


def _read_tensor(path: str, key: str) -> np.ndarray:
  """One tensor as numpy through the project's one safetensors reader (sources.SafetensorsFile);
  bfloat16 tensors come back as float32, as the loaders here expect."""
  from gcd_jax.convert.sources import SafetensorsFile  # pylint: disable=g-import-not-at-top
  with SafetensorsFile(path) as f:
    a = f.read(key)
  return a.astype(np.float32) if a.dtype == ml_dtypes.bfloat16 else a


def _shapes_of(path: str) -> dict[str, tuple[int, ...]]:
  from gcd_jax.convert.sources import SafetensorsFile  # pylint: disable=g-import-not-at-top
  with SafetensorsFile(path) as f:
    return dict(f.shapes)


def read_safetensors_lazy(path: str) -> tuple[dict[str, tuple[int, ...]], Callable[[str], np.ndarray]]:
  """(shapes {key: torch shape}, getter key → numpy array) for a safetensors file / index / folder.

  A folder is searched for the standard diffusers / transformers weight names (sharded or not).
  """
  path = os.fspath(path)
  if os.path.isdir(path):
    path = find_weights_file(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f'weights file {path} does not exist')
  if path.endswith('.index.json'):
    with open(path) as f:
      weight_map = json.load(f).get('weight_map')
    if not isinstance(weight_map, dict):
      raise ValueError(f'{path}: no "weight_map" in the shard index')
    base = os.path.dirname(path)
    shards = sorted(set(weight_map.values()))
    shapes, owner = {}, {}
    for shard in shards:
      shard_path = os.path.join(base, shard)
      if not os.path.exists(shard_path):
        raise FileNotFoundError(f'shard {shard_path} named in {path} does not exist')
      for k, s in _shapes_of(shard_path).items():
        shapes[k], owner[k] = s, shard_path
    return shapes, lambda key: _read_tensor(owner[key], key)
  shapes = _shapes_of(path)
  return shapes, lambda key: _read_tensor(path, key)


def find_weights_file(folder: str, variant: str | None = None) -> str:
  """The safetensors file (or shard index) inside a diffusers / transformers component folder."""
  tried = []
  for name in WEIGHT_NAMES:
    if variant:
      stem, ext = name.rsplit('.', 1)
      name = f'{stem}.{variant}.{ext}'
    for candidate in (name, name + '.index.json'):
      p = os.path.join(folder, candidate)
      tried.append(p)
      if os.path.exists(p):
        return p
  raise FileNotFoundError(f'no safetensors weights in {folder}: tried {", ".join(tried)}. Point at a '
                          'diffusers component folder (unet/, vae/, image_encoder/); PyTorch .bin '
                          'files are not supported — re-save them with safetensors')


def load_diffusers_component(folder: str, module: nnx.Module, *, ignore: Iterable[str] = (),
                             allow_missing: Iterable[str] = (), variant: str | None = None,
                             what: str | None = None, hint: str = '') -> list[str]:
  """Loads a component folder's safetensors into `module` (concrete or `nnx.eval_shape` abstract).

  ignore: fnmatch globs of file keys to drop before matching (buffers such as `*.position_ids`, or a
  text tower stored beside the vision tower). allow_missing: module keys that may be absent (left as
  initialised and returned). Raises WeightLoadError listing all missing / unexpected / mis-shaped keys.
  """
  folder = os.fspath(folder)
  if not os.path.isdir(folder):
    raise FileNotFoundError(f'component folder {folder} does not exist')
  shapes, get = read_safetensors_lazy(find_weights_file(folder, variant))
  patterns = tuple(ignore)
  shapes = {k: s for k, s in shapes.items()
            if not any(fnmatch.fnmatchcase(k, p) for p in patterns)}
  return load_torch_state(module, get, shapes, what=what or f'weights from {folder}',
                          allow_missing=allow_missing, hint=hint)


# ---------------------------------------------------------------------------------------------------
# U-Net


def diffusers_unet_config(cfg: ml_collections.ConfigDict) -> dict:
  """The diffusers `UNetSpatioTemporalConditionModel` kwargs that build the same U-Net as `cfg`.

  (GCD's `aux_label_emb` has no diffusers equivalent; it is loaded separately.)
  """
  u = cfg.unet
  chans = [u.model_channels * m for m in u.channel_mult]
  n = len(chans)
  attn = [2 ** lvl in tuple(u.attention_resolutions) for lvl in range(n)]
  if u.num_groups != 32:
    raise DiffusersConfigError(f'unet.num_groups={u.num_groups}: diffusers hard-codes 32 groups')
  return dict(
      in_channels=u.in_channels,
      out_channels=u.out_channels,
      down_block_types=tuple('CrossAttnDownBlockSpatioTemporal' if a else 'DownBlockSpatioTemporal'
                             for a in attn),
      up_block_types=tuple('CrossAttnUpBlockSpatioTemporal' if a else 'UpBlockSpatioTemporal'
                           for a in reversed(attn)),
      block_out_channels=tuple(chans),
      addition_time_embed_dim=u.addition_time_embed_dim,
      projection_class_embeddings_input_dim=u.adm_in_channels,
      layers_per_block=u.num_res_blocks,
      cross_attention_dim=u.context_dim,
      transformer_layers_per_block=u.transformer_depth,
      num_attention_heads=tuple(c // u.num_head_channels for c in chans),
      num_frames=cfg.num_frames,
  )


# Class defaults of UNetSpatioTemporalConditionModel, for config.json files that omit a field.
_DIFFUSERS_UNET_DEFAULTS = dict(
    in_channels=8, out_channels=4,
    down_block_types=('CrossAttnDownBlockSpatioTemporal',) * 3 + ('DownBlockSpatioTemporal',),
    up_block_types=('UpBlockSpatioTemporal',) + ('CrossAttnUpBlockSpatioTemporal',) * 3,
    block_out_channels=(320, 640, 1280, 1280), addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=768, layers_per_block=2, cross_attention_dim=1024,
    transformer_layers_per_block=1, num_attention_heads=(5, 10, 20, 20))


def _normalise(field: str, value, n: int):
  """Per-block fields may be an int (same for every block) or a list."""
  if field in ('layers_per_block', 'cross_attention_dim', 'transformer_layers_per_block',
               'num_attention_heads') and isinstance(value, int):
    return (value,) * n
  if isinstance(value, list):
    return tuple(tuple(v) if isinstance(v, list) else v for v in value)
  return value


def check_diffusers_unet_config(config: dict, cfg: ml_collections.ConfigDict, where: str = 'config'
                                ) -> None:
  """Raises DiffusersConfigError naming every field where `config` (unet/config.json) and `cfg` differ."""
  cls = config.get('_class_name', 'UNetSpatioTemporalConditionModel')
  if cls != 'UNetSpatioTemporalConditionModel':
    raise DiffusersConfigError(f'{where}: _class_name is {cls!r}, expected '
                               "'UNetSpatioTemporalConditionModel' (an SVD unet/ folder)")
  want = diffusers_unet_config(cfg)
  n = len(want['block_out_channels'])
  diffs = []
  for field, expected in want.items():
    if field == 'num_frames':  # not used by the forward pass (docs/weights.md §2b)
      continue
    got = _normalise(field, config.get(field, _DIFFUSERS_UNET_DEFAULTS[field]), n)
    exp = _normalise(field, expected, n)
    if got != exp:
      diffs.append(f'{field}: file {got} vs model config {exp}')
  if diffs:
    raise DiffusersConfigError(
        f'{where} does not match the model config {cfg.get("name", "")!r}: ' + '; '.join(diffs) +
        '. Pick the matching preset (configs/models.py) or the right folder.')


AUX_KEYS = ('aux_label_emb.linear_1.weight', 'aux_label_emb.linear_1.bias',
            'aux_label_emb.linear_2.weight', 'aux_label_emb.linear_2.bias')


def load_diffusers_unet(folder: str, cfg: ml_collections.ConfigDict, rngs: nnx.Rngs | None = None,
                        *, variant: str | None = None, init_missing_camera: bool = False):
  """VideoUNet with the weights of a diffusers `unet/` folder (or a pipeline folder containing `unet/`).

  rngs None: the module is built abstractly and filled from the file (weights allocated once).
  A GCD config (aux_emb_dim > 0) needs `aux_label_emb.*` in the folder; an SVD folder has none — pass
  `init_missing_camera=True` together with `rngs` to start the camera MLP from PyTorch's default init,
  as GCD's fine-tuning does (docs/reference.md §1.2).
  """
  from gcd_jax.models.unet import VideoUNet  # pylint: disable=g-import-not-at-top
  from gcd_jax.models import layers  # pylint: disable=g-import-not-at-top
  folder = os.fspath(folder)
  if os.path.isdir(os.path.join(folder, 'unet')):
    folder = os.path.join(folder, 'unet')
  config_path = os.path.join(folder, 'config.json')
  if not os.path.exists(config_path):
    raise FileNotFoundError(f'{config_path} does not exist; pass a diffusers unet/ folder (or the '
                            'pipeline folder that contains it)')
  with open(config_path) as f:
    config = json.load(f)
  check_diffusers_unet_config(config, cfg, where=config_path)
  allow_missing = ()
  if cfg.unet.aux_emb_dim and init_missing_camera:
    if rngs is None:
      raise ValueError('init_missing_camera=True needs `rngs` to initialise aux_label_emb')
    allow_missing = AUX_KEYS
  if rngs is None:
    module = layers.abstract_module(lambda c, r: VideoUNet(c, rngs=r), cfg)
  else:
    module = VideoUNet(cfg, rngs=rngs)
  hint = ''
  if cfg.unet.aux_emb_dim:
    hint = ('(a GCD config: an SVD folder has no aux_label_emb.*; pass init_missing_camera=True and '
            'rngs to initialise the camera MLP fresh)')
  load_diffusers_component(folder, module, allow_missing=allow_missing, variant=variant,
                           what=f'U-Net weights from {folder}', hint=hint)
  return module


__all__ = ['read_safetensors_lazy', 'find_weights_file', 'load_diffusers_component',
           'diffusers_unet_config', 'check_diffusers_unet_config', 'load_diffusers_unet',
           'DiffusersConfigError', 'WeightLoadError']
