"""The attention core, `softmax(q·kᵀ/√d)·v`, with one implementation per platform.

Every attention of the project (U-Net spatial/temporal/cross, VAE mid-block, CLIP) goes through
`dot_product_attention(q, k, v)` with q [N, Lq, heads, d], k/v [N, Lk, heads, d]. What computes it is chosen
at trace time by the backend in effect (`use_backend`, set by the train step and the sampler from
`config.model.attention`):

* `xla`: `jax.nn.dot_product_attention(implementation='xla')`. Materialises the [N, heads, Lq, Lk] logits: at
  full size one level-0 spatial attention holds [14·5, 1536, 1536] float32 (0.62 GiB) per video, the largest
  activation of the train step (docs/performance.md).
* `flash`: the Pallas TPU flash-attention kernel (`jax.experimental.pallas.ops.tpu.flash_attention`), which
  never materialises the logits. A Pallas call is not split by the SPMD partitioner, so it runs inside
  `jax.shard_map` over the mesh axes that split the rows (each device attends its own rows; attention is
  independent per row). Used where both lengths are ≥ `flash_min_len` and multiples of its 128 block; the
  short sequences (temporal attention over 14 frames, the 1-token cross-attention, the VAE/CLIP blocks)
  stay on `xla`, where their logits are small.
* `cudnn`: `jax.nn.dot_product_attention(implementation='cudnn')` (GPU, bfloat16/float16 inputs).
* `fused`: the CPU path. One XLA:CPU custom call per direction (gcd_jax/models/cpu_attention.py and .cc, built at
  first use with the host's C++ compiler) that keeps each query's scores in cache and never writes the logits
  to memory; the backward pass recomputes them from the saved log-sum-exp (flash attention's scheme). Float32
  inside. Used where there are ≥ `fused_min_keys` (64) keys; shorter sequences stay on `deferred`. On the
  2-core development VM, one small-preset spatial attention ([28, 1536, 2 × 16]): 0.068 s forward vs 0.35 s
  for `deferred` and 0.057 s for PyTorch's fused SDPA (docs/performance.md). Under a mesh it runs per device
  inside `jax.shard_map`, like `flash`.
* `deferred`: XLA's best form of the op on CPU. The same softmax attention written so that XLA:CPU makes fewer passes over the
  logits: heads-major einsums ([N, H, L, D]), and the softmax normalisation deferred to after the value
  product (o = (exp(s − max s) · v) / Σ exp(s − max s): the division touches [N, H, Lq, D], not
  [N, H, Lq, Lk]). On the 2-core development VM, one small-preset spatial attention ([28, 1536, 2 × 16]
  float32): 0.24 s vs 0.51 s for `xla` forward, 0.73 s vs 1.52 s forward + backward (PyTorch's fused SDPA:
  0.14 s forward). Splitting the queries into blocks (`jax.lax.map`) was slower (0.29-0.32 s).

`auto` picks `flash` on TPU, `cudnn` on GPU for half-precision inputs (else `xla`), `fused` on CPU (`deferred`
where the kernel cannot be built, e.g. no C++ compiler: logged once).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import math

import jax
import jax.numpy as jnp

IMPLEMENTATIONS = ('auto', 'xla', 'flash', 'cudnn', 'fused', 'deferred')


@dataclasses.dataclass(frozen=True)
class Backend:
  """impl: one of IMPLEMENTATIONS. mesh/row_axes: for `flash` and `fused` under SPMD, the mesh and the axes
  that split the N rows (None: a single device, or already inside shard_map)."""
  impl: str = 'auto'
  mesh: jax.sharding.Mesh | None = None
  row_axes: tuple[str, ...] = ()
  flash_min_len: int = 512
  fused_min_keys: int = 64


_BACKEND: contextvars.ContextVar[Backend] = contextvars.ContextVar('gcd_jax_attention', default=Backend())


@contextlib.contextmanager
def use_backend(backend: Backend):
  """Attention traced inside this context uses `backend` (a trace-time setting: wrap the traced function)."""
  if backend.impl not in IMPLEMENTATIONS:
    raise ValueError(f'attention implementation {backend.impl!r}: use one of {", ".join(IMPLEMENTATIONS)}')
  token = _BACKEND.set(backend)
  try:
    yield backend
  finally:
    _BACKEND.reset(token)


def with_backend(fn, backend: Backend):
  """fn traced under `backend` (for `jax.jit(with_backend(step_fn, ...))`)."""

  def wrapped(*args, **kwargs):
    with use_backend(backend):
      return fn(*args, **kwargs)

  wrapped.__name__ = getattr(fn, '__name__', 'fn')
  return wrapped


def current() -> Backend:
  return _BACKEND.get()


def resolve(impl: str, platform: str | None = None) -> str:
  """'auto' → the implementation for `platform` (default: JAX's default backend)."""
  if impl != 'auto':
    return impl
  platform = platform or jax.default_backend()
  return {'tpu': 'flash', 'gpu': 'cudnn', 'cuda': 'cudnn', 'rocm': 'xla'}.get(platform, 'fused')


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
  """q [N, Lq, H, D], k/v [N, Lk, H, D] → [N, Lq, H, D]; scale 1/√D, softmax in float32 for low precision."""
  b = current()
  impl = resolve(b.impl, _platform(b))
  lq, lk = q.shape[1], k.shape[1]
  if impl == 'flash' and _flash_fits(lq, lk, b.flash_min_len):
    return _flash(q, k, v, b)
  if impl == 'cudnn' and q.dtype in (jnp.bfloat16, jnp.float16):
    return jax.nn.dot_product_attention(q, k, v, implementation='cudnn')
  if impl == 'fused':
    from gcd_jax.models import cpu_attention  # pylint: disable=g-import-not-at-top
    # Short key sequences (temporal attention over 14 frames, the 1-token cross-attention) are faster on
    # XLA: the kernel's per-(row, head) set-up outweighs the little softmax work there.
    if lk >= b.fused_min_keys and (b.impl == 'fused' or cpu_attention.available_or_log()):  # explicit: fails loudly
      if _rows_split(q.shape[0], b):
        return _per_device_rows(cpu_attention.fused_attention, q, k, v, b, 'fused')
    impl = 'deferred'  # no kernel, or rows that the mesh does not split evenly: XLA's partitioner copes
  if impl == 'deferred':
    return deferred_attention(q, k, v)
  return jax.nn.dot_product_attention(q, k, v, implementation='xla')


def _platform(b: Backend) -> str | None:
  if b.mesh is not None:
    return b.mesh.devices.flat[0].platform
  return None


def _rows_split(n: int, b: Backend) -> bool:
  return b.mesh is None or not b.row_axes or n % math.prod(b.mesh.shape[a] for a in b.row_axes) == 0


def _flash_fits(lq: int, lk: int, min_len: int) -> bool:
  return min(lq, lk) >= min_len and lq % 128 == 0 and lk % 128 == 0


def deferred_attention(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
  """Exact softmax attention, heads-major, normalised after the value product (see the module docstring).
  Low-precision inputs: logits, exponentials and sums in float32, the value product in the input dtype."""
  dtype = q.dtype
  qt, kt, vt = (a.transpose(0, 2, 1, 3) for a in (q, k, v))  # [N, H, L, D]
  s = jnp.einsum('nhqd,nhkd->nhqk', qt * jnp.asarray(q.shape[-1] ** -0.5, dtype), kt,
                 preferred_element_type=jnp.float32)
  e = jnp.exp(s - jax.lax.stop_gradient(s.max(-1, keepdims=True)))  # the max only shifts: no gradient
  o = jnp.einsum('nhqk,nhkd->nhqd', e.astype(dtype), vt, preferred_element_type=jnp.float32)
  o = o / e.sum(-1, keepdims=True)
  return o.astype(dtype).transpose(0, 2, 1, 3)


def _flash(q: jax.Array, k: jax.Array, v: jax.Array, b: Backend) -> jax.Array:
  from jax.experimental.pallas.ops.tpu import flash_attention as fa  # pylint: disable=g-import-not-at-top
  scale = 1.0 / math.sqrt(q.shape[-1])

  def kernel(q, k, v):  # [n, L, H, D] → the kernel's [n, H, L, D]
    lq, lk = q.shape[1], k.shape[1]
    bs = fa.BlockSizes(block_q=min(512, lq), block_k_major=min(512, lk), block_k=min(512, lk), block_b=1,
                       block_q_major_dkv=min(512, lq), block_k_major_dkv=min(512, lk),
                       block_k_dkv=min(512, lk), block_q_dkv=min(512, lq),
                       block_k_major_dq=min(512, lk), block_k_dq=min(512, lk), block_q_dq=min(512, lq))
    o = fa.flash_attention(q.swapaxes(1, 2), k.swapaxes(1, 2), v.swapaxes(1, 2), sm_scale=scale,
                           block_sizes=bs)
    return o.swapaxes(1, 2)

  return _per_device_rows(kernel, q, k, v, b, 'flash')


def _per_device_rows(kernel, q: jax.Array, k: jax.Array, v: jax.Array, b: Backend, name: str) -> jax.Array:
  """kernel(q, k, v) per device over the rows that `b.row_axes` give it: a custom call (Pallas or FFI) is not
  split by the SPMD partitioner, which would otherwise gather every row onto every device."""
  if b.mesh is None or not b.row_axes:
    return kernel(q, k, v)
  spec = jax.sharding.PartitionSpec(b.row_axes)
  rows = math.prod(b.mesh.shape[a] for a in b.row_axes)
  if q.shape[0] % rows:
    raise ValueError(f'{name} attention: {q.shape[0]} rows do not split over mesh axes {b.row_axes} ({rows} devices)')
  return jax.shard_map(kernel, mesh=b.mesh, in_specs=(spec, spec, spec), out_specs=spec, check_vma=False)(q, k, v)
