"""Device mesh and logical-axis → mesh-axis sharding rules (big_vision / MaxText style).

Parameters carry logical axis names as `out_sharding` metadata (gcd_jax/models/layers.py `param()`):
'embed' (input features), 'mlp' (output features), 'norm' (norm scales/biases), None (kernel spatial dims).
`config.sharding.rules` maps each logical name to a mesh axis (or None); the default is FSDP:

  rules = (('embed', 'fsdp'), ('mlp', 'tensor'), ('norm', None))
  fsdp_largest = True  → the 'fsdp' axis goes to the LARGEST named dim of each kernel that divides evenly
                          (a [320, 1280] kernel is sharded over its 1280 dim whatever its logical name).

A mesh axis is dropped from a dim it does not divide (replicated there), and a parameter smaller than
`min_shard_size` elements is replicated (biases/norm scales: communication would cost more than the
memory saved). Optimizer moments take their parameter's spec; scalars (Adam's count) are replicated.
The batch is split over ('data', 'fsdp') on its leading (video) dim, so every device holds whole videos.

All specs are computed on abstract shapes (`nnx.eval_shape`), before anything is allocated.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ('data', 'fsdp', 'tensor')
BATCH_AXES = ('data', 'fsdp')


def make_mesh(shape: Sequence[int], axes: Sequence[str] = MESH_AXES, devices=None,
              dcn_shape: Sequence[int] | None = None) -> Mesh:
  """Mesh over all (global) devices. One entry of `shape` may be -1: it takes the remaining devices.

  shape (1, -1, 1) on 8 devices → data 1, fsdp 8, tensor 1.

  dcn_shape (multi-slice TPU jobs): how each axis spans the slices, which talk over the data-centre network
  (DCN) instead of ICI; `shape` is then the mesh of ONE slice. E.g. 2 slices of 8 chips with shape (1, -1, 1)
  and dcn_shape (2, 1, 1): data 2 (across slices: one gradient all-reduce per step over DCN), fsdp 8 (within
  a slice, over ICI). Built by `mesh_utils.create_hybrid_device_mesh` from the devices' `slice_index`."""
  devices = jax.devices() if devices is None else devices
  dcn = [int(s) for s in (dcn_shape or (1,) * len(axes))]
  if len(dcn) != len(axes):
    raise ValueError(f'mesh dcn_shape {dcn} and axes {tuple(axes)} differ in length')
  if math.prod(dcn) > 1:
    return _hybrid_mesh(shape, axes, devices, dcn)
  n = len(devices)
  shape = [int(s) for s in shape]
  if len(shape) != len(axes):
    raise ValueError(f'mesh shape {shape} and axes {tuple(axes)} differ in length')
  if shape.count(-1) > 1:
    raise ValueError(f'mesh shape {shape}: at most one -1 entry')
  if -1 in shape:
    rest = math.prod(s for s in shape if s != -1)
    if n % rest:
      raise ValueError(f'mesh shape {shape}: {n} devices are not divisible by {rest}')
    shape[shape.index(-1)] = n // rest
  if math.prod(shape) != n:
    raise ValueError(f'mesh shape {shape} needs {math.prod(shape)} devices, {n} are available; '
                     f'use -1 for one axis (e.g. --config.mesh.shape="(1,-1,1)")')
  # Auto axes: shardings are propagated by XLA from the in/out shardings we give jit (jax ≥ 0.9's
  # make_mesh defaults to Explicit axes, which would demand out_sharding on every conv/dot).
  auto = (jax.sharding.AxisType.Auto,) * len(axes)
  return jax.make_mesh(tuple(shape), tuple(axes), axis_types=auto, devices=devices)


def _hybrid_mesh(shape, axes, devices, dcn) -> Mesh:
  from jax.experimental import mesh_utils  # pylint: disable=g-import-not-at-top
  slices = math.prod(dcn)
  found = len({getattr(d, 'slice_index', 0) for d in devices})
  if found != slices:
    raise ValueError(f'mesh dcn_shape {tuple(dcn)} needs {slices} slices, but the devices come from {found} '
                     f'(their slice_index); set --config.mesh.dcn_shape="({found},1,1)" to match this job')
  per_slice = len(devices) // slices
  ici = [int(s) for s in shape]
  if -1 in ici:
    rest = math.prod(s for s in ici if s != -1)
    ici[ici.index(-1)] = per_slice // max(rest, 1)
  if math.prod(ici) != per_slice:
    raise ValueError(f'mesh shape {tuple(ici)} needs {math.prod(ici)} devices per slice, each slice has {per_slice}')
  grid = mesh_utils.create_hybrid_device_mesh(ici, dcn, devices=devices)
  return Mesh(grid, tuple(axes), axis_types=(jax.sharding.AxisType.Auto,) * len(axes))


def logical_to_spec(shape: Sequence[int], names: Sequence[str | None] | None, rules: Mapping[str, str | None],
                    mesh: Mesh, *, fsdp_largest: bool = True, min_shard_size: int = 0) -> P:
  """PartitionSpec of one parameter from its logical axis names and the rules (see module docstring)."""
  shape = tuple(int(s) for s in shape)
  if not names or int(np.prod(shape, dtype=np.int64)) < max(min_shard_size, 1) or len(names) != len(shape):
    return P()
  axes = [rules.get(n) if n is not None else None for n in names]
  size = lambda a: mesh.shape.get(a, 1)  # noqa: E731
  if fsdp_largest and 'fsdp' in mesh.shape:
    axes = [None if a == 'fsdp' else a for a in axes]
    # The dims not already split over a real (>1) axis, largest first (ties: the later, out-feature dim).
    # Candidates: dims whose logical name the rules shard at all ('embed', 'mlp'; not 'norm' → None).
    free = [d for d in range(len(shape)) if rules.get(names[d]) is not None and (axes[d] is None or size(axes[d]) == 1)]
    for d in sorted(free, key=lambda d: (-shape[d], -d)):
      if shape[d] % size('fsdp') == 0:
        axes[d] = 'fsdp'
        break
  for d, a in enumerate(axes):
    # Size-1 axes are dropped too (equivalent, and specs stay minimal/readable).
    if a is not None and (a not in mesh.shape or size(a) == 1 or shape[d] % size(a)):
      axes[d] = None
  while axes and axes[-1] is None:
    axes.pop()
  return P(*axes)


def param_specs(abstract_params: nnx.State, rules, mesh: Mesh, *, fsdp_largest: bool = True,
                min_shard_size: int = 0) -> dict[str, P]:
  """{flat name: PartitionSpec} for an (abstract) nnx.Param state; names as `flat_names`."""
  rules = dict(rules)
  out = {}
  for path, var in nnx.to_flat_state(abstract_params):
    names = var.get_metadata().get('out_sharding')
    out[flat_name(path)] = logical_to_spec(var.shape, names, rules, mesh, fsdp_largest=fsdp_largest,
                                           min_shard_size=min_shard_size)
  return out


def flat_name(path) -> str:
  return '.'.join(str(p) for p in path)


def named(mesh: Mesh, specs):
  """pytree of PartitionSpec → pytree of NamedSharding."""
  return jax.tree.map(lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda x: isinstance(x, P))


def batch_spec(ndim: int) -> P:
  """Leading (video) dim over data × fsdp, the rest replicated."""
  return P(BATCH_AXES, *([None] * (ndim - 1)))


def batch_divisor(mesh: Mesh) -> int:
  return math.prod(mesh.shape[a] for a in BATCH_AXES)


def optimizer_specs(tx, abstract_opt_state, param_spec_tree):
  """Optimizer state specs: parameter-shaped leaves (Adam mu/nu, EMA) take the parameter's spec, the rest
  (step counts) are replicated."""
  import optax  # pylint: disable=g-import-not-at-top
  return optax.tree_map_params(tx, lambda _, spec: spec, abstract_opt_state, param_spec_tree,
                               transform_non_params=lambda _: P(),
                               is_leaf=lambda x: isinstance(x, P))


def to_global(batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict:
  """Host-local numpy batch (this process's videos) → global jax.Arrays sharded over data × fsdp.

  Each process passes its own shard (per-host data, `data_pipelines` shard = process index); the global
  batch is the concatenation over processes in process order."""
  out = {}
  for k, v in batch.items():
    v = np.asarray(v)
    out[k] = jax.make_array_from_process_local_data(NamedSharding(mesh, batch_spec(v.ndim)), v)
  return out
