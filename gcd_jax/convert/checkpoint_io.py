"""The converted-model checkpoint: what `gcd-jax convert` writes and training / sampling restore.

Layout of a checkpoint folder DIR:

  DIR/metadata.json   {"format": "gcd-jax-model", "version": 1, "model_config": {...}, "components":
                       [...], "dtype": ..., "source": {...}, "param_counts": {...}, ...}
  DIR/network/index.json       {"leaves": [[path, shape, dtype, part], ...], "parts": n}
  DIR/network/part_000/ ...    Orbax PyTree checkpoints, each a subset (≤ ~0.5 GB) of the nnx.Param
                               state of GCDNetwork (`unet` + `camera_embedder`) as a pure dict
                               (`nnx.State.to_pure_dict()` paths, list indices as int keys), Flax
                               layout (kernels channels-last / (in, out)).
  DIR/vae/, DIR/clip/          the same for AutoencoderKLTemporalDecoder, CLIPVisionModelWithProjection

Why parts: Orbax (0.12.8, tensorstore) holds a full extra copy of what one `save` call writes until it
commits (measured: +3.2 GB for a 3.1 GB tree, whatever save_concurrent_gb says), so one 6.1 GB U-Net
item would cost 12 GB. Writing ≤ 0.5 GB parts one after another keeps the converter streaming: it
fills, saves and frees one part at a time (bench/convert_memory.py). Each component is separate so a
sampler can restore only what it needs. Restoring onto a mesh passes the target shardings straight to
Orbax (`restore_model_checkpoint(..., shardings=...)`), so every host reads only its shards.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any, Iterable, Mapping

import jax
import ml_collections
import numpy as np
from flax import nnx

from gcd_jax.models import layers

COMPONENTS = ('network', 'vae', 'clip')
METADATA = 'metadata.json'
FORMAT = 'gcd-jax-model'
VERSION = 1


class CheckpointError(ValueError):
  """A model checkpoint folder that is missing, incomplete or does not match the requested config."""


_BUILDERS = {  # component → (module, class); imported lazily (keeps `gcd-jax --help` fast)
    'network': ('gcd_jax.models.gcd', 'GCDNetwork'),
    'vae': ('gcd_jax.models.vae', 'AutoencoderKLTemporalDecoder'),
    'clip': ('gcd_jax.models.clip', 'CLIPVisionModelWithProjection'),
}


def module_class(component: str):
  import importlib  # pylint: disable=g-import-not-at-top
  if component not in _BUILDERS:
    raise ValueError(f'unknown component {component!r}; one of {COMPONENTS}')
  mod, cls = _BUILDERS[component]
  return getattr(importlib.import_module(mod), cls)


_ABSTRACT_CACHE: dict[tuple[str, str], tuple] = {}
# Config sections a component's module does not read (so e.g. a U-Net change reuses the cached VAE).
_OTHER_SECTIONS = {'network': ('vae', 'clip', 'name'), 'vae': ('unet', 'camera', 'clip', 'name'),
                   'clip': ('unet', 'camera', 'vae', 'name')}


def _cache_key(cfg: ml_collections.ConfigDict, component: str) -> str:
  d = config_to_dict(cfg)
  return json.dumps({k: v for k, v in d.items() if k not in _OTHER_SECTIONS[component]},
                    sort_keys=True)


def abstract_module(cfg: ml_collections.ConfigDict, component: str) -> nnx.Module:
  """The component's module with ShapeDtypeStruct parameters (nothing allocated).

  Tracing the constructor takes seconds (20 s for the full-size U-Net), so the split abstract module
  is cached per (component, config); every call returns a fresh module.
  """
  key = (component, _cache_key(cfg, component))
  if key not in _ABSTRACT_CACHE:
    _ABSTRACT_CACHE[key] = nnx.split(_eval_shape(cfg, component), nnx.Param, ...)
  graphdef, params, rest = _ABSTRACT_CACHE[key]
  copy = lambda state: jax.tree.map(lambda x: x, state)  # noqa: E731  (new Variables, same leaves)
  return nnx.merge(graphdef, copy(params), copy(rest))


def _eval_shape(cfg: ml_collections.ConfigDict, component: str) -> nnx.Module:
  """The component's constructor, abstractly (`layers.abstract_module`: rngs=None, the fast path)."""
  cls = module_class(component)
  return layers.abstract_module(lambda c, rngs: cls(c, rngs=rngs), cfg)


def config_to_dict(cfg: ml_collections.ConfigDict) -> dict:
  return json.loads(cfg.to_json())


def config_from_dict(d: Mapping) -> ml_collections.ConfigDict:
  def fix(x):  # JSON turns tuples into lists; presets use tuples
    if isinstance(x, dict):
      return {k: fix(v) for k, v in x.items()}
    if isinstance(x, list):
      return tuple(fix(v) for v in x)
    return x
  return ml_collections.ConfigDict(fix(dict(d)))


def _pure(state) -> dict:
  if isinstance(state, nnx.State):
    return state.to_pure_dict()
  if isinstance(state, nnx.Module):
    return nnx.state(state, nnx.Param).to_pure_dict()
  return state


PART_BYTES = 512 * 2 ** 20
INDEX = 'index.json'


def _flatten(tree: Mapping, prefix: tuple = ()) -> list[tuple[tuple, Any]]:
  out = []
  for k, v in tree.items():
    if isinstance(v, Mapping):
      out += _flatten(v, prefix + (k,))
    else:
      out.append((prefix + (k,), v))
  return out


def _nest(flat: Iterable[tuple[tuple, Any]]) -> dict:
  tree: dict = {}
  for path, value in flat:
    node = tree
    for p in path[:-1]:
      node = node.setdefault(p, {})
    node[path[-1]] = value
  return tree


class ComponentWriter:
  """Writes one component as a sequence of Orbax parts: `add(path, array)` ... `close()`.

  Arrays are buffered until `part_bytes` accumulate, saved as one part and released, so at most one
  part (plus Orbax's copy of it) is in memory: the converter allocates each array just before `add`.
  """

  def __init__(self, tmp_dir: str, component: str, part_bytes: int = PART_BYTES):
    self.folder = os.path.join(os.path.abspath(tmp_dir), component)
    os.makedirs(self.folder)
    self.part_bytes = part_bytes
    self._pending: list[tuple[tuple, Any]] = []
    self._pending_bytes = 0
    self.leaves: list[list] = []
    self.parts = 0

  def add(self, path: tuple, array) -> None:
    self._pending.append((tuple(path), array))
    self._pending_bytes += int(np.prod(np.shape(array))) * np.dtype(array.dtype).itemsize
    if self._pending_bytes >= self.part_bytes:
      self.flush()

  def flush(self) -> None:
    if not self._pending:
      return
    import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
    # jnp.asarray of an aligned numpy array is zero-copy on CPU.
    tree = _nest((p, jax.numpy.asarray(a)) for p, a in self._pending)
    with ocp.Checkpointer(ocp.PyTreeCheckpointHandler()) as ckptr:
      ckptr.save(os.path.join(self.folder, f'part_{self.parts:03d}'), args=ocp.args.PyTreeSave(tree))
    for p, a in self._pending:
      self.leaves.append([list(p), list(np.shape(a)), str(np.dtype(a.dtype)), self.parts])
    self.parts += 1
    self._pending, self._pending_bytes = [], 0

  def close(self) -> None:
    self.flush()
    with open(os.path.join(self.folder, INDEX), 'w') as f:
      json.dump(dict(parts=self.parts, leaves=self.leaves), f)


def save_component(tmp_dir: str, component: str, state, part_bytes: int = PART_BYTES) -> None:
  """Writes one component (nnx.State, module, or pure dict of numpy / jax arrays) under `tmp_dir`."""
  writer = ComponentWriter(tmp_dir, component, part_bytes)
  for path, a in _flatten(_pure(state)):
    writer.add(path, a)
  writer.close()


def write_metadata(tmp_dir: str, cfg: ml_collections.ConfigDict, meta: Mapping[str, Any],
                   components: Iterable[str]) -> dict:
  data = dict(format=FORMAT, version=VERSION, model_config=config_to_dict(cfg),
              components=list(components), **dict(meta))
  with open(os.path.join(tmp_dir, METADATA), 'w') as f:
    json.dump(data, f, indent=2, sort_keys=True, default=str)
  return data


def staging_dir(out_dir: str) -> str:
  """A fresh temporary folder next to `out_dir` (same filesystem, so the final rename is atomic)."""
  out_dir = os.path.abspath(out_dir)
  if os.path.exists(out_dir):
    raise CheckpointError(f'output {out_dir} already exists; choose another --out or delete it first')
  parent = os.path.dirname(out_dir)
  if not os.path.isdir(parent):
    raise CheckpointError(f'parent folder {parent} of the output does not exist')
  return tempfile.mkdtemp(prefix=f'.{os.path.basename(out_dir)}.', suffix='.partial', dir=parent)


def finalize(tmp_dir: str, out_dir: str) -> None:
  from gcd_jax import fileio  # pylint: disable=g-import-not-at-top
  fileio.set_default_mode(tmp_dir)  # mkdtemp made it 0700
  os.replace(tmp_dir, os.path.abspath(out_dir))


def save_model_checkpoint(out_dir: str, network_state, vae_state, clip_state,
                          cfg: ml_collections.ConfigDict, meta: Mapping[str, Any] | None = None,
                          *, part_bytes: int = PART_BYTES) -> str:
  """Writes a model checkpoint folder (see module docstring); states may be None to omit a component.

  States: nnx.State (Param), nnx.Module, or pure dicts. Written to a temporary folder and renamed, so
  a failure leaves no `out_dir` behind.
  """
  tmp = staging_dir(out_dir)
  try:
    written = []
    for name, state in zip(COMPONENTS, (network_state, vae_state, clip_state)):
      if state is not None:
        save_component(tmp, name, state, part_bytes)
        written.append(name)
    write_metadata(tmp, cfg, meta or {}, written)
    finalize(tmp, out_dir)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return os.path.abspath(out_dir)


def read_metadata(ckpt_dir: str) -> dict:
  path = os.path.join(ckpt_dir, METADATA)
  if not os.path.isdir(ckpt_dir):
    raise CheckpointError(f'{ckpt_dir}: no such checkpoint folder')
  if not os.path.exists(path):
    raise CheckpointError(f'{ckpt_dir} has no {METADATA}: not a gcd-jax model checkpoint (made by '
                          '`gcd-jax convert`)')
  with open(path) as f:
    data = json.load(f)
  if data.get('format') != FORMAT:
    raise CheckpointError(f'{path}: format {data.get("format")!r}, expected {FORMAT!r}')
  return data


def checkpoint_config(ckpt_dir: str) -> ml_collections.ConfigDict:
  """The model config stored with the checkpoint."""
  return config_from_dict(read_metadata(ckpt_dir)['model_config'])


def _target(abstract_params: dict, shardings) -> dict:
  """ShapeDtypeStructs with the requested shardings (default: the first device, unsharded)."""
  if shardings is None:
    shardings = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  if isinstance(shardings, jax.sharding.Sharding):
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=shardings),
                        abstract_params)
  shard_tree = _pure(shardings)
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract_params, shard_tree)


def _read_index(ckpt_dir: str, component: str) -> dict:
  path = os.path.join(os.path.abspath(ckpt_dir), component, INDEX)
  if not os.path.exists(path):
    raise CheckpointError(f'{ckpt_dir} has no complete `{component}` item ({path} missing)')
  with open(path) as f:
    return json.load(f)


def restore_component(ckpt_dir: str, cfg: ml_collections.ConfigDict, component: str,
                      shardings=None) -> nnx.Module:
  """One component's module, parameters restored (onto `shardings` if given)."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  index = _read_index(ckpt_dir, component)
  abstract = abstract_module(cfg, component)
  graphdef, params, rest = nnx.split(abstract, nnx.Param, ...)
  if jax.tree.leaves(rest):
    raise CheckpointError(f'{component}: module holds non-parameter state, which this format does '
                          'not store')
  abstract_pure = jax.tree.map(lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype), params.to_pure_dict())
  target = dict(_flatten(_target(abstract_pure, shardings)))
  stored = {tuple(p): (tuple(shape), part) for p, shape, _, part in index['leaves']}
  _check_shapes(component, ckpt_dir, {p: v[0] for p, v in stored.items()},
                {p: tuple(t.shape) for p, t in target.items()})
  restored = []
  with ocp.Checkpointer(ocp.PyTreeCheckpointHandler()) as ckptr:
    for part in range(index['parts']):
      sub = _nest((p, target[p]) for p, (_, q) in stored.items() if q == part)
      got = ckptr.restore(
          os.path.join(os.path.abspath(ckpt_dir), component, f'part_{part:03d}'),
          args=ocp.args.PyTreeRestore(
              item=sub, restore_args=ocp.checkpoint_utils.construct_restore_args(sub)))
      restored += _flatten(got)
  nnx.replace_by_pure_dict(params, _nest(restored))
  return nnx.merge(graphdef, params, rest)


def _check_shapes(component: str, ckpt_dir: str, have: dict, want: dict) -> None:
  from gcd_jax.convert.torch_layout import WeightLoadError  # pylint: disable=g-import-not-at-top
  name = lambda p: '.'.join(map(str, p))  # noqa: E731
  missing = sorted(name(p) for p in set(want) - set(have))
  unexpected = sorted(name(p) for p in set(have) - set(want))
  mismatched = sorted((name(p), have[p], want[p]) for p in set(want) & set(have) if have[p] != want[p])
  if missing or unexpected or mismatched:
    raise WeightLoadError(f'{component} from {ckpt_dir}', missing, unexpected, mismatched,
                          hint='the checkpoint was written for another model config; restore with '
                               'cfg=None to use the config stored in metadata.json')


def restore_model_checkpoint(ckpt_dir: str, cfg: ml_collections.ConfigDict | None = None,
                             shardings: Mapping[str, Any] | jax.sharding.Sharding | None = None,
                             components: Iterable[str] | None = None):
  """(network, vae, clip) NNX modules restored from a `gcd-jax convert` checkpoint folder.

  cfg: the model config to build (None: the one stored in metadata.json). Only parameter shapes must
    match the stored ones, so compute options (dtype=bfloat16, remat=...) may differ.
  shardings: None (first device), one `jax.sharding.Sharding` for every array, or
    {component: pytree of Shardings} matching the component's Param state (an nnx.State such as
    `nnx.get_named_sharding(nnx.state(abstract, nnx.Param), mesh)` works).
  components: which to restore (default: all the checkpoint has); the others come back as None.
  """
  meta = read_metadata(ckpt_dir)
  if cfg is None:
    cfg = config_from_dict(meta['model_config'])
  wanted = tuple(meta.get('components', COMPONENTS) if components is None else components)
  out = []
  for name in COMPONENTS:
    if name not in wanted:
      out.append(None)
      continue
    if name not in meta.get('components', COMPONENTS):
      raise CheckpointError(f'{ckpt_dir} does not contain `{name}` (it has {meta.get("components")})')
    sh = shardings.get(name) if isinstance(shardings, Mapping) else shardings
    out.append(restore_component(ckpt_dir, cfg, name, sh))
  return tuple(out)
