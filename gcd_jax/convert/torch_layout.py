"""The one mapping between our NNX parameter trees and PyTorch (diffusers / transformers) state dicts.

Our modules name their sub-modules exactly as diffusers / transformers do (see `gcd_jax/models/layers.py`),
so a parameter path `('down_blocks', 0, 'resnets', 1, 'spatial_res_block', 'conv1', 'kernel')` is the
PyTorch key `down_blocks.0.resnets.1.spatial_res_block.conv1.weight`. Only the leaf name and layout change:

| Flax leaf   | PyTorch leaf | layout change                                                    |
|-------------|--------------|------------------------------------------------------------------|
| `kernel` 2-D | `weight`    | Linear `(out, in)` → `(in, out)`                                  |
| `kernel` 3/4/5-D | `weight` | Conv `(O, I, *k)` → `(*k, I, O)` (channels-last)                 |
| `scale`     | `weight`     | none (GroupNorm / LayerNorm)                                      |
| `embedding` | `weight`     | none (nn.Embedding, e.g. CLIP position embedding)                 |
| other       | same name    | none (`bias`, `mix_factor`, `class_embedding`)                   |

Everything here works on abstract (`nnx.eval_shape`) trees too, so converters can stream tensors one by
one into a preallocated tree without ever holding two copies of the weights.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterable, Mapping

import jax
import numpy as np
from flax import nnx

_LEAF_TO_TORCH = {'kernel': 'weight', 'scale': 'weight', 'embedding': 'weight'}


@dataclasses.dataclass(frozen=True)
class LeafSpec:
  """Where one PyTorch tensor goes: NNX path, both shapes, and the axis permutation torch → flax."""
  path: tuple
  flax_shape: tuple[int, ...]
  torch_shape: tuple[int, ...]
  perm: tuple[int, ...] | None  # np.transpose(torch_array, perm) gives the flax array

  def to_flax(self, array) -> np.ndarray:
    a = np.asarray(array)
    return np.ascontiguousarray(np.transpose(a, self.perm)) if self.perm else a

  def to_torch(self, array) -> np.ndarray:
    a = np.asarray(array)
    if not self.perm:
      return a
    return np.ascontiguousarray(np.transpose(a, np.argsort(self.perm)))


class WeightLoadError(ValueError):
  """Missing, unexpected or mis-shaped tensors; the message lists all of them."""

  def __init__(self, what: str, missing=(), unexpected=(), mismatched=(), hint: str = ''):
    self.missing, self.unexpected, self.mismatched = list(missing), list(unexpected), list(mismatched)
    # One line, a few examples each: the full lists stay on the exception (missing / unexpected / mismatched).
    shown = 3
    more = lambda items: f' and {len(items) - shown} more' if len(items) > shown else ''  # noqa: E731
    parts = []
    if self.missing:
      parts.append(f'{len(self.missing)} missing key(s): {", ".join(self.missing[:shown])}{more(self.missing)}')
    if self.unexpected:
      parts.append(f'{len(self.unexpected)} unexpected key(s): {", ".join(self.unexpected[:shown])}'
                   f'{more(self.unexpected)}')
    if self.mismatched:
      parts.append(f'{len(self.mismatched)} shape mismatch(es) (key: file vs model): ' +
                   ', '.join(f'{k}: {a} vs {b}' for k, a, b in self.mismatched[:shown]) + more(self.mismatched))
    super().__init__(f'cannot load {what}: ' + '; '.join(parts) + (f'. {hint}' if hint else ''))


def torch_key(path: tuple) -> str:
  """NNX path → PyTorch key (`kernel`/`scale`/`embedding` → `weight`)."""
  parts = [str(p) for p in path]
  parts[-1] = _LEAF_TO_TORCH.get(parts[-1], parts[-1])
  return '.'.join(parts)


def _perm(leaf: str, ndim: int) -> tuple[int, ...] | None:
  if leaf != 'kernel' or ndim < 2:
    return None
  if ndim == 2:
    return (1, 0)
  # torch (O, I, k1..kn) → flax (k1..kn, I, O)
  return tuple(range(2, ndim)) + (1, 0)


def leaf_specs(module_or_state) -> dict[str, LeafSpec]:
  """{torch_key: LeafSpec} for every `nnx.Param` of a (possibly abstract) module or state."""
  state = module_or_state if isinstance(module_or_state, nnx.State) else nnx.state(
      module_or_state, nnx.Param)
  specs = {}
  for path, var in nnx.to_flat_state(state):
    value = var.get_value() if hasattr(var, 'get_value') else var
    shape = tuple(value.shape)
    perm = _perm(str(path[-1]), len(shape))
    torch_shape = tuple(np.array(shape)[np.argsort(perm)]) if perm else shape
    specs[torch_key(path)] = LeafSpec(tuple(path), shape, tuple(int(s) for s in torch_shape), perm)
  return specs


def check_keys(what: str, specs: Mapping[str, LeafSpec], available: Mapping[str, tuple[int, ...]],
               *, allow_missing: Iterable[str] = (), hint: str = '') -> list[str]:
  """Raises WeightLoadError unless `available` {key: torch shape} covers `specs` exactly.

  Keys in `allow_missing` may be absent (returned so the caller knows what it must initialise).
  """
  allow = set(allow_missing)
  missing = sorted(k for k in specs if k not in available and k not in allow)
  unexpected = sorted(k for k in available if k not in specs)
  mismatched = sorted((k, tuple(available[k]), specs[k].torch_shape) for k in specs
                      if k in available and tuple(available[k]) != specs[k].torch_shape)
  if missing or unexpected or mismatched:
    raise WeightLoadError(what, missing, unexpected, mismatched, hint)
  return sorted(k for k in specs if k not in available)


def load_torch_state(module: nnx.Module, tensors: Mapping[str, object] | Callable[[str], object],
                     shapes: Mapping[str, tuple[int, ...]] | None = None, *, what: str = 'weights',
                     allow_missing: Iterable[str] = (), hint: str = '') -> list[str]:
  """Copies PyTorch-layout tensors into `module` in place (one tensor at a time).

  tensors: a mapping {key: array} or a getter `key -> array` (lazy safetensors reads); `shapes` must
  be given with a getter. Returns the keys that were allowed to be missing and were left untouched.
  """
  specs = leaf_specs(module)
  if shapes is None:
    if callable(tensors):
      raise TypeError('load_torch_state: pass `shapes` together with a tensor getter')
    shapes = {k: tuple(np.shape(v)) for k, v in tensors.items()}
  left = check_keys(what, specs, shapes, allow_missing=allow_missing, hint=hint)
  get = tensors if callable(tensors) else tensors.__getitem__
  state = nnx.state(module, nnx.Param)
  flat = dict(nnx.to_flat_state(state))
  for key, spec in specs.items():
    if key in left:
      continue
    var = flat[spec.path]
    old = var.get_value()
    var.set_value(jax.numpy.asarray(spec.to_flax(get(key)), dtype=old.dtype))
  nnx.update(module, state)
  return left


def torch_state_dict(module: nnx.Module) -> dict[str, np.ndarray]:
  """{PyTorch key: numpy array in PyTorch layout} for every parameter of `module`."""
  specs = leaf_specs(module)
  flat = dict(nnx.to_flat_state(nnx.state(module, nnx.Param)))
  return {k: spec.to_torch(np.asarray(flat[spec.path].get_value())) for k, spec in specs.items()}
