"""PyTorch weights (sgm `svd.safetensors`, diffusers folders, GCD `.ckpt`) → a gcd-jax model checkpoint.

`convert_checkpoint(fmt, src, config, out_dir, init_missing=..., dtype=...)`:
1. builds the three components abstractly (`nnx.eval_shape`: nothing allocated) and derives every
   expected file key and shape from them (`sgm_keys.py` for sgm / .ckpt, identity for diffusers);
2. checks the file against that list before writing anything: every missing, unexpected or mis-shaped
   key is reported at once (WeightLoadError), with a hint (`--init-missing`, or the preset the file
   looks like);
3. streams: reads one tensor at a time, applies the (bijective) sgm transform and the PyTorch → Flax
   transpose into a fresh buffer and hands it to `checkpoint_io.ComponentWriter`, which saves and
   frees ~0.5 GB Orbax parts as they fill. Peak memory is a few GB whatever the model size, far
   under the 1.3 × file size budget (bench/convert_memory.py, full-size random svd.safetensors of
   9.35 GB: peak RSS 3.56 GB = 0.38 ×, 81 s on the shared 2-core box);
4. writes into a temporary sibling folder renamed to `out_dir` at the end: a failure leaves nothing.

`--init-missing` initialises exactly the GCD camera layers that `svd.safetensors` lacks
(`unet.aux_label_emb.*`, `camera_embedder.proj.*`) with PyTorch's default Linear init
U(±1/√fan_in) for weight and bias, as GCD does when fine-tuning from SVD (docs/reference.md §1.2).

Keys the model does not hold are dropped only from documented lists (`sgm_keys.SGM_IGNORED`,
`CKPT_IGNORED` lpips.*, `CKPT_EMA` model_ema.* with a warning, and the target-path encoder copy
`first_stage_model.encoder.*`, which is compared against the conditioning encoder and warned about if
it differs, docs/reference.md §6 item 4). Anything else unexpected is an error.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import time
import warnings
from typing import Iterable

import ml_collections
import numpy as np

from gcd_jax import progress as progress_lib
from gcd_jax.convert import checkpoint_io, sgm_keys, sources
from gcd_jax.convert.torch_layout import LeafSpec, WeightLoadError, leaf_specs

FORMATS = ('sgm', 'diffusers', 'gcd-ckpt')
CAMERA_OURS = ('unet.aux_label_emb.', 'camera_embedder.')  # network keys of the GCD camera layers
_DTYPES = {'float32': np.float32, 'bfloat16': 'bfloat16', 'float16': np.float16}


def np_dtype(name: str) -> np.dtype:
  import ml_dtypes  # pylint: disable=g-import-not-at-top
  if name not in _DTYPES:
    raise ValueError(f'unknown --dtype {name!r}; use one of {", ".join(_DTYPES)}')
  return np.dtype(ml_dtypes.bfloat16) if name == 'bfloat16' else np.dtype(_DTYPES[name])


# ---------------------------------------------------------------------------------------------------
# Config specs: 'configs/models.py:gcd,dtype=bfloat16', 'gcd', or a python file with get_config(arg).


def load_model_config(spec) -> ml_collections.ConfigDict:
  """A model config from a spec: a ConfigDict, a bare preset (`gcd`), or `path.py[:arg]` (a training config's
  .model); one loader for every command (gcd_jax/config_flags.py)."""
  if isinstance(spec, ml_collections.ConfigDict):
    return spec
  from gcd_jax import config_flags  # pylint: disable=g-import-not-at-top
  return config_flags.load_model_or_training(str(spec))[0]


# ---------------------------------------------------------------------------------------------------
# The plan: which file tensors go where


@dataclasses.dataclass
class Plan:
  maps: list[sgm_keys.TensorMap]          # tensor maps present in the file
  init: dict[str, list[str]]              # component → our keys to initialise fresh
  duplicates: dict[str, str]              # extra sgm copies to compare (dup key → our source key)
  ignored: list[str]


def _is_camera(component: str, key: str) -> bool:
  return component == 'network' and key.startswith(CAMERA_OURS)


def expected_file_shapes(maps: Iterable[sgm_keys.TensorMap],
                         specs: dict[str, dict[str, LeafSpec]]) -> dict[str, tuple[int, ...]]:
  out = {}
  for m in maps:
    ours = [specs[m.component][k].torch_shape for k in m.ours]
    for k, s in zip(m.sgm, m.transform.sgm_shapes(ours)):
      out[k] = tuple(s)
  return out


def make_maps(fmt: str, cfg, specs: dict[str, dict[str, LeafSpec]]) -> list[sgm_keys.TensorMap]:
  keys = {c: list(s) for c, s in specs.items()}
  if fmt == 'diffusers':
    return sgm_keys.diffusers_tensor_maps(keys)
  return sgm_keys.sgm_tensor_maps(keys, sgm_keys.UNetLayout.from_config(cfg.unet),
                                  len(cfg.vae.block_out_channels))


def plan_conversion(fmt: str, source: sources.Source, cfg, specs, *, init_missing: bool) -> Plan:
  """Checks the file against the model; raises WeightLoadError listing every problem."""
  maps = make_maps(fmt, cfg, specs)
  expected = expected_file_shapes(maps, specs)
  camera_file_keys = {k for m in maps if any(_is_camera(m.component, o) for o in m.ours) for k in m.sgm}
  dups = sgm_keys.sgm_duplicates(maps) if fmt != 'diffusers' else {}
  available = dict(source.shapes)
  missing = sorted(k for k in expected if k not in available)
  allowed = [k for k in missing if k in camera_file_keys] if init_missing else []
  missing = [k for k in missing if k not in allowed]
  unexpected = sorted(k for k in available if k not in expected and k not in dups)
  mismatched = sorted((k, tuple(available[k]), expected[k]) for k in expected
                      if k in available and tuple(available[k]) != expected[k])
  mismatched += sorted((k, tuple(available[k]), expected[dups[k]]) for k in dups
                       if k in available and tuple(available[k]) != expected[dups[k]])
  if missing or unexpected or mismatched:
    raise WeightLoadError(f'{fmt} weights from {source.path} into model config '
                          f'{cfg.get("name", "?")!r}', missing, unexpected, mismatched,
                          hint=_hint(fmt, cfg, available, missing, unexpected, mismatched,
                                     camera_file_keys))
  present = [m for m in maps if all(k in available for k in m.sgm)]
  init: dict[str, list[str]] = {}
  for m in maps:
    if not all(k in available for k in m.sgm):
      init.setdefault(m.component, []).extend(m.ours)
  dup_ours = {}
  for dup, src in dups.items():
    if dup in available:
      dup_ours[dup] = src
  return Plan(present, init, dup_ours, list(source.ignored))


def _hint(fmt, cfg, available, missing, unexpected, mismatched, camera_keys) -> str:
  if missing and set(missing) <= camera_keys and not unexpected and not mismatched:
    return ('the file has no GCD camera layers (an SVD checkpoint?): pass --init-missing to '
            'initialise the camera layers fresh, as GCD does when it starts from SVD '
            '(docs/reference.md §1.2)')
  guess = guess_preset(fmt, available)
  name = cfg.get('name', '?')
  if guess and guess != name:
    return f'wrong --config? the file looks like preset {guess!r} (you asked for {name!r})'
  if guess == name and any(k in camera_keys for k in missing):
    return 'pass --init-missing to initialise the camera layers fresh'
  return ('check --from (sgm / diffusers / gcd-ckpt) and --config; keys the model does not use are '
          'only dropped from the documented lists in gcd_jax/convert/sgm_keys.py')


def _fingerprint_of_file(fmt: str, shapes: dict) -> dict:
  """Cheap structural facts of a file (model width, camera, CLIP width) to recognise a preset."""
  if fmt == 'diffusers':
    k = {'conv_in': 'unet/conv_in.weight', 'aux': 'unet/aux_label_emb.linear_1.weight',
         'cam': 'camera_embedder/proj.weight', 'clip': 'image_encoder/visual_projection.weight',
         'vae': 'vae/encoder.conv_in.weight', 'adm': 'unet/add_embedding.linear_1.weight'}
  else:
    k = {'conv_in': sgm_keys.UNET_PREFIX + 'input_blocks.0.0.weight',
         'aux': sgm_keys.UNET_PREFIX + 'aux_label_emb.0.weight',
         'cam': sgm_keys.CAMERA_PREFIX + 'proj.weight', 'clip': sgm_keys.CLIP_PREFIX + 'proj',
         'vae': sgm_keys.COND_VAE_PREFIX + 'encoder.conv_in.weight',
         'adm': sgm_keys.UNET_PREFIX + 'label_emb.0.0.weight'}
  s = {name: shapes.get(key) for name, key in k.items()}
  clip = s['clip']
  if clip is not None and fmt == 'diffusers':
    clip = clip[::-1]
  return dict(channels=s['conv_in'][0] if s['conv_in'] else None,
              adm=s['adm'][1] if s['adm'] else None,
              aux=s['aux'][1] if s['aux'] else 0,
              cam_in=s['cam'][1] if s['cam'] else None,
              clip=clip[0] if clip else None,
              vae=s['vae'][0] if s['vae'] else None)


def _fingerprint_of_config(cfg) -> dict:
  cam_in = {'spherical': 13, 'pose': 12}.get(cfg.camera.embedder)
  return dict(channels=cfg.unet.model_channels, adm=cfg.unet.adm_in_channels,
              aux=cfg.unet.aux_emb_dim, cam_in=cam_in, clip=cfg.clip.hidden_size,
              vae=cfg.vae.block_out_channels[0])


def guess_preset(fmt: str, shapes: dict) -> str | None:
  from gcd_jax.models import presets as models  # pylint: disable=g-import-not-at-top
  fp = _fingerprint_of_file(fmt, shapes)
  best = None
  for preset in models.PRESETS:
    want = _fingerprint_of_config(models.get_config(preset))
    # An SVD file (no camera) also "looks like" the GCD presets with --init-missing.
    if all(fp[k] == want[k] for k in ('channels', 'adm', 'clip', 'vae')):
      if fp['aux'] == want['aux'] and fp['cam_in'] == want['cam_in']:
        return preset
      best = best or preset
  return best


# ---------------------------------------------------------------------------------------------------
# Conversion


@dataclasses.dataclass
class Summary:
  out_dir: str
  fmt: str
  source: str
  dtype: str
  tensors_read: int
  tensors_ignored: int
  initialised: list[str]
  param_counts: dict[str, int]
  tensor_counts: dict[str, int]
  seconds: float
  warnings: list[str]

  def text(self) -> str:
    lines = [f'converted {self.fmt} {self.source} → {self.out_dir} ({self.seconds:.1f} s, {self.dtype})',
             f'  file tensors read: {self.tensors_read}, ignored (documented lists): '
             f'{self.tensors_ignored}']
    for c, n in self.param_counts.items():
      lines.append(f'  {c:8s} {self.tensor_counts[c]:5d} tensors {n:15,d} parameters')
    lines.append(f'  total    {sum(self.tensor_counts.values()):5d} tensors '
                 f'{sum(self.param_counts.values()):15,d} parameters')
    if self.initialised:
      lines.append(f'  initialised fresh (PyTorch default Linear init): {", ".join(self.initialised)}')
    lines += [f'  warning: {w}' for w in self.warnings]
    return '\n'.join(lines)


def _torch_linear_init(specs: dict[str, LeafSpec], keys: list[str], rng: np.random.Generator
                       ) -> dict[str, np.ndarray]:
  """PyTorch nn.Linear default init: weight and bias ~ U(±1/√fan_in) (kaiming_uniform(a=√5))."""
  out = {}
  for key in keys:
    spec = specs[key]
    weight_key = key.rsplit('.', 1)[0] + '.weight'
    if weight_key not in specs or len(specs[weight_key].torch_shape) != 2:
      raise ValueError(f'--init-missing: {key} is not part of a Linear layer')
    fan_in = specs[weight_key].torch_shape[1]
    bound = 1.0 / math.sqrt(fan_in)
    out[key] = rng.uniform(-bound, bound, size=spec.torch_shape).astype(np.float32)
  return out


def convert_checkpoint(fmt: str, src, config, out_dir: str, *, init_missing: bool = False,
                       dtype: str = 'float32', seed: int = 0, progress: bool = True,
                       config_spec: str | None = None, revision: str | None = None) -> Summary:
  """Converts `src` (format `fmt`) for model `config` into the checkpoint folder `out_dir`. src: a local
  file / folder, or a Hugging Face Hub reference (`ORG/REPO` for diffusers, `ORG/REPO/FILE` otherwise;
  gcd_jax/convert/hub.py) at `revision`."""
  t0 = time.time()
  if fmt not in FORMATS:
    raise ValueError(f'unknown --from {fmt!r}; use one of {", ".join(FORMATS)}')
  store_dtype = np_dtype(dtype)
  cfg = load_model_config(config)
  out_dir = os.path.abspath(out_dir)
  if os.path.exists(out_dir):
    raise checkpoint_io.CheckpointError(f'output {out_dir} already exists; choose another --out or '
                                        'delete it first')
  from gcd_jax.convert import hub  # pylint: disable=g-import-not-at-top
  src = hub.resolve(src, fmt, revision=revision)
  source = sources.open_source(fmt, src)  # validates the file (missing / truncated / unsafe) first
  try:
    abstract = {c: checkpoint_io.abstract_module(cfg, c) for c in checkpoint_io.COMPONENTS}
    specs = {c: leaf_specs(m) for c, m in abstract.items()}
    del abstract
    plan = plan_conversion(fmt, source, cfg, specs, init_missing=init_missing)
    warn = list(source.warnings)
    tmp = checkpoint_io.staging_dir(out_dir)
    try:
      summary = _write(fmt, source, cfg, specs, plan, tmp, store_dtype, seed, progress, warn)
      checkpoint_io.write_metadata(tmp, cfg, dict(
          source=dict(format=fmt, path=os.path.abspath(os.fspath(src)),
                      dtypes=sorted({str(d) for d in source.dtypes.values()})),
          config_spec=config_spec or (config if isinstance(config, str) else cfg.get('name')),
          dtype=dtype, initialised=summary['initialised'], param_counts=summary['param_counts'],
          tensor_counts=summary['tensor_counts'], ignored_keys=len(plan.ignored),
          converted_at=time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())),
          checkpoint_io.COMPONENTS)
      checkpoint_io.finalize(tmp, out_dir)
    except BaseException:
      shutil.rmtree(tmp, ignore_errors=True)
      raise
  finally:
    source.close()
  for w in warn:
    warnings.warn(w, stacklevel=2)
  return Summary(out_dir, fmt, os.fspath(src), dtype, summary['read'], len(plan.ignored),
                 summary['initialised'], summary['param_counts'], summary['tensor_counts'],
                 time.time() - t0, warn)


def _write(fmt, source, cfg, specs, plan: Plan, tmp: str, store_dtype, seed, progress, warn) -> dict:
  rng = np.random.default_rng(seed)
  n_tensors = sum(len(m.sgm) for m in plan.maps) + len(plan.duplicates)
  bar = progress_lib.bar(n_tensors, enabled=progress, desc=f'convert {fmt}', unit='tensor')
  read = 0
  initialised, param_counts, tensor_counts = [], {}, {}
  by_component: dict[str, list[sgm_keys.TensorMap]] = {}
  for m in plan.maps:
    by_component.setdefault(m.component, []).append(m)
  try:
    for comp in checkpoint_io.COMPONENTS:
      comp_specs = specs[comp]
      writer = checkpoint_io.ComponentWriter(tmp, comp)
      filled = set()

      def put(key, array, comp_specs=comp_specs, writer=writer, filled=filled):
        spec = comp_specs[key]
        a = np.asarray(array)
        if a.shape != spec.torch_shape:  # guarded by plan_conversion; a transform bug otherwise
          raise AssertionError(f'{comp}:{key}: got {a.shape}, expected {spec.torch_shape}')
        # Each parameter is allocated just before the writer takes it; the writer saves and frees
        # ~0.5 GB parts, so memory stays bounded whatever the model size.
        buf = np.empty(spec.flax_shape, store_dtype)
        np.copyto(buf, np.transpose(a, spec.perm) if spec.perm else a, casting='unsafe')
        writer.add(spec.path, buf)
        filled.add(key)

      for m in by_component.get(comp, []):
        arrays = m.transform.to_ours([source.read(k) for k in m.sgm])
        for key, a in zip(m.ours, arrays):
          put(key, a)
        read += len(m.sgm)
        del arrays
        if bar is not None:
          bar.update(len(m.sgm))
      init_keys = plan.init.get(comp, [])
      if init_keys:
        bad = [k for k in init_keys if not _is_camera(comp, k)]
        if bad:  # plan_conversion only allows camera keys; keep the promise explicit
          raise AssertionError(f'would initialise non-camera keys {bad}')
        for key, a in _torch_linear_init(comp_specs, sorted(init_keys), rng).items():
          put(key, a)
        initialised += [f'{comp}:{k}' for k in sorted(init_keys)]
      left = sorted(set(comp_specs) - filled)
      if left:
        raise AssertionError(f'{comp}: parameters not filled: {left[:10]}')
      writer.close()
      if comp == 'vae' and plan.duplicates:
        read += _compare_duplicates(source, plan.duplicates, warn, bar)
      param_counts[comp] = int(sum(math.prod(s.flax_shape) for s in comp_specs.values()))
      tensor_counts[comp] = len(comp_specs)
  finally:
    if bar is not None:
      bar.close()
  return dict(read=read, initialised=initialised, param_counts=param_counts,
              tensor_counts=tensor_counts)


def _compare_duplicates(source, duplicates: dict[str, str], warn: list, bar) -> int:
  """first_stage_model.encoder.* must equal the conditioning encoder we keep (docs/reference.md §6 item 4)."""
  differ = []
  for dup, src in sorted(duplicates.items()):
    a, b = source.read(dup), source.read(src)
    if a.shape != b.shape or not np.array_equal(a, b):
      diff = float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) \
          if a.shape == b.shape else float('nan')
      differ.append((dup, diff))
    if bar is not None:
      bar.update(1)
  if differ:
    warn.append(
        f'{len(differ)} tensor(s) of first_stage_model.encoder differ from '
        f'conditioner.embedders.3.encoder.encoder (e.g. {differ[0][0]}, max abs diff '
        f'{differ[0][1]:.3g}); the model keeps one encoder: the conditioning copy. Export writes it '
        'to both places.')
  return len(duplicates)
