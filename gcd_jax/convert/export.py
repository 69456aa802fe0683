"""A gcd-jax model checkpoint → PyTorch safetensors (sgm single file, or a diffusers pipeline folder).

The inverse of `convert.py`, through the same TensorMaps (`sgm_keys.py`), so sgm → JAX → sgm is
bit-exact for every tensor the model holds. Written tensor by tensor (`sources.write_safetensors`),
restoring one component at a time: peak memory ≈ the largest component (the U-Net, 6.1 GB full size).

sgm output (one file, prefixes of docs/weights.md §2a): `model.diffusion_model.*` (incl. GCD's
`aux_label_emb.*`), `conditioner.embedders.5.proj.*` (camera), `first_stage_model.decoder.*`,
`first_stage_model.encoder.*` and `conditioner.embedders.3.encoder.{encoder,quant_conv}.*` (the same
encoder weights in both places: GCD's target path and its conditioning path),
`conditioner.embedders.0.open_clip.model.visual.*`. Dropped because the model never holds them (so not
part of the round trip): the unused 2-D decoder of embedders.3 (`decoder.*`, `post_quant_conv.*`) and
the OpenCLIP text-tower leftovers (`sgm_keys.SGM_IGNORED`). sgm's own loader uses strict=False, so the
exported file loads into a GCD / SVD DiffusionEngine.

diffusers output (a folder): `unet/` (config.json + diffusion_pytorch_model.safetensors; a GCD model's
camera MLP is kept there as `aux_label_emb.linear_{1,2}.*`, which diffusers' own class ignores),
`vae/`, `image_encoder/` (transformers CLIPVisionModelWithProjection), and for GCD `camera_embedder/`
(config.json + diffusion_pytorch_model.safetensors with `proj.*`). `gcd-jax convert --from diffusers`
reads this folder back exactly.
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np
from flax import nnx

from gcd_jax import fileio
from gcd_jax import progress as progress_lib
from gcd_jax.convert import checkpoint_io, sgm_keys, sources
from gcd_jax.convert.convert import expected_file_shapes, make_maps, np_dtype
from gcd_jax.convert.torch_layout import leaf_specs

TARGETS = ('sgm', 'diffusers')


def _flat_params(module) -> dict[tuple, jax.Array]:
  return {tuple(p): v.get_value() for p, v in nnx.to_flat_state(nnx.state(module, nnx.Param))}


class _Producer:
  """Our restored arrays → file tensors, one map at a time (a map's outputs are cached until read).

  Components are restored lazily and only one is held at a time, so exporting a full-size model
  needs the memory of its largest component (the U-Net), not of the whole model; callers order the
  file keys by component.
  """

  def __init__(self, ckpt_dir, cfg, maps, specs, duplicates, dtype):
    self.by_key = {k: m for m in maps for k in m.sgm}
    self.ckpt_dir, self.cfg = ckpt_dir, cfg
    self.specs, self.dups, self.dtype = specs, duplicates, dtype
    self._cache: dict[str, np.ndarray] = {}
    self._component, self._params = None, None

  def component_of(self, key: str) -> str:
    return self.by_key[self.dups.get(key, key)].component

  def _load(self, component: str):
    if component != self._component:
      self._params = None  # free the previous component first
      restored = checkpoint_io.restore_model_checkpoint(self.ckpt_dir, self.cfg,
                                                        components=(component,))
      module = restored[checkpoint_io.COMPONENTS.index(component)]
      self._params, self._component = _flat_params(module), component
    return self._params

  def __call__(self, key: str) -> np.ndarray:
    key = self.dups.get(key, key)
    if key in self._cache:
      return self._cache.pop(key)
    m = self.by_key[key]
    params = self._load(m.component)
    ours = []
    for k in m.ours:
      spec = self.specs[m.component][k]
      ours.append(spec.to_torch(np.asarray(params[spec.path])))
    outs = m.transform.to_sgm(ours)
    result = None
    for k, a in zip(m.sgm, outs):
      if k == key:
        result = a
      else:
        self._cache[k] = a
    return np.asarray(result).astype(self.dtype, copy=False)


def export_checkpoint(ckpt_dir: str, to: str, out_path: str, *, dtype: str | None = None,
                      progress: bool = True) -> dict:
  """Writes `out_path` (sgm: a .safetensors file; diffusers: a folder). Returns a small summary."""
  if to not in TARGETS:
    raise ValueError(f'unknown --to {to!r}; use one of {", ".join(TARGETS)}')
  meta = checkpoint_io.read_metadata(ckpt_dir)
  cfg = checkpoint_io.config_from_dict(meta['model_config'])
  dtype = dtype or meta.get('dtype', 'float32')
  out_dtype = np_dtype(dtype)
  out_path = os.path.abspath(out_path)
  if os.path.exists(out_path):
    raise FileExistsError(f'output {out_path} already exists; choose another --out or delete it first')
  if not os.path.isdir(os.path.dirname(out_path)):
    raise FileNotFoundError(f'parent folder of {out_path} does not exist')
  components = [c for c in checkpoint_io.COMPONENTS if c in meta.get('components', ())]
  specs = {c: leaf_specs(checkpoint_io.abstract_module(cfg, c)) for c in components}
  maps = make_maps(to, cfg, specs)
  shapes = expected_file_shapes(maps, specs)
  if to == 'sgm':
    dups = sgm_keys.sgm_duplicates(maps)
    for dup, src in dups.items():
      shapes[dup] = shapes[src]
    produce = _Producer(ckpt_dir, cfg, maps, specs, dups, out_dtype)
    keys = sorted(shapes, key=lambda k: (components.index(produce.component_of(k)), k))
    bar = progress_lib.bar(len(keys), enabled=progress, desc='export sgm', unit='tensor')
    try:
      size = sources.write_safetensors(
          out_path, [(k, shapes[k], out_dtype) for k in keys], produce,
          metadata={'format': 'pt', 'exported_by': 'gcd-jax', 'model': str(cfg.get('name'))},
          progress=bar.update if bar is not None else None)
    finally:
      if bar is not None:
        bar.close()
    return dict(out=out_path, tensors=len(keys), bytes=size, dtype=dtype)
  produce = _Producer(ckpt_dir, cfg, maps, specs, {}, out_dtype)
  return _export_diffusers(cfg, produce, shapes, out_path, out_dtype, dtype, progress)


def _export_diffusers(cfg, produce, shapes, out_path, out_dtype, dtype, progress) -> dict:
  order = ('unet', 'camera_embedder', 'vae', 'image_encoder')  # network, network, vae, clip
  folders: dict[str, list[str]] = {}
  for k in sorted(shapes, key=lambda k: (order.index(k.split('/', 1)[0]), k)):
    folders.setdefault(k.split('/', 1)[0], []).append(k)
  bar = progress_lib.bar(len(shapes), enabled=progress, desc='export diffusers', unit='tensor')
  total = 0
  try:
    with fileio.atomic_dir(out_path) as tmp:
      configs = diffusers_configs(cfg)
      for folder, keys in folders.items():
        os.makedirs(os.path.join(tmp, folder))
        with open(os.path.join(tmp, folder, 'config.json'), 'w') as f:
          json.dump(configs[folder], f, indent=2)
        name = 'model.safetensors' if folder == 'image_encoder' else 'diffusion_pytorch_model.safetensors'
        prefix = folder + '/'
        total += sources.write_safetensors(
            os.path.join(tmp, folder, name),
            [(k[len(prefix):], shapes[k], out_dtype) for k in keys],
            lambda key, prefix=prefix: produce(prefix + key), metadata={'format': 'pt'},
            progress=bar.update if bar is not None else None)
  finally:
    if bar is not None:
      bar.close()
  return dict(out=out_path, tensors=len(shapes), bytes=total, dtype=dtype, folders=sorted(folders))


def diffusers_configs(cfg) -> dict[str, dict]:
  """config.json contents of unet/, vae/, image_encoder/ (and GCD's camera_embedder/)."""
  from gcd_jax.convert.diffusers import diffusers_unet_config  # pylint: disable=g-import-not-at-top
  unet = dict(_class_name='UNetSpatioTemporalConditionModel', _diffusers_version='0.42.1',
              sample_size=96, **{k: list(v) if isinstance(v, tuple) else v
                                 for k, v in diffusers_unet_config(cfg).items()})
  if cfg.unet.aux_emb_dim:
    # GCD extension, ignored by diffusers' class (which also ignores the aux_label_emb.* tensors).
    unet['gcd_aux_emb_dim'] = cfg.unet.aux_emb_dim
  v = cfg.vae
  vae = dict(_class_name='AutoencoderKLTemporalDecoder', _diffusers_version='0.42.1',
             in_channels=v.in_channels, out_channels=v.out_channels,
             down_block_types=['DownEncoderBlock2D'] * len(v.block_out_channels),
             block_out_channels=list(v.block_out_channels), layers_per_block=v.layers_per_block,
             latent_channels=v.latent_channels, sample_size=768, scaling_factor=v.scaling_factor,
             force_upcast=True)
  c = cfg.clip
  clip = dict(architectures=['CLIPVisionModelWithProjection'], model_type='clip_vision_model',
              hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
              projection_dim=c.projection_dim, num_hidden_layers=c.num_layers,
              num_attention_heads=c.num_heads, num_channels=3, image_size=c.image_size,
              patch_size=c.patch_size, hidden_act=c.hidden_act, layer_norm_eps=c.layer_norm_eps,
              attention_dropout=0.0, initializer_range=0.02, initializer_factor=1.0,
              torch_dtype='float32')
  out = dict(unet=unet, vae=vae, image_encoder=clip)
  if cfg.camera.embedder != 'none':
    out['camera_embedder'] = dict(
        _class_name={'spherical': 'SphericalEmbedder', 'pose': 'CameraEmbedder'}[cfg.camera.embedder],
        embedder=cfg.camera.embedder, embed_dim=cfg.camera.embed_dim,
        in_features={'spherical': 13, 'pose': 12}[cfg.camera.embedder],
        note='GCD camera embedder (conditioner.embedders.5 in sgm); not a diffusers class')
  return out
