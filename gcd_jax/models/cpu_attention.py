"""`fused`: softmax attention as one XLA:CPU custom call per direction (gcd_jax/models/cpu_attention.cc).

XLA:CPU has no fused attention: its best form of the op here (`deferred` in attention.py) still writes the
[N, H, Lq, Lk] float32 logits to memory and reads them back, which made the small preset's sampler 1.7× slower
than PyTorch's fused SDPA on the same 2 cores (docs/performance.md). The kernel in cpu_attention.cc keeps each
query's scores in a per-thread buffer and saves only the log-sum-exp for the backward pass (flash attention's
recomputation, Dao et al. 2022).

The C++ source is compiled at first use with the host's C++ compiler ($CXX, else g++, -O3 -march=native)
into the gcd-jax cache ($GCD_JAX_EXT_DIR, default ~/.cache/gcd-jax/ext), keyed by the source, the
jaxlib version and the CPU, and registered with XLA as the custom-call targets `gcd_attention_fwd` /
`gcd_attention_bwd` (platform cpu). `available_or_log()` says whether that worked; attention.py's `auto` falls back
to `deferred` when it did not (no compiler), with one log line, and an explicit `fused` request fails with the
compiler's message.

Inputs of any float dtype are computed in float32 (the kernel's only type) and cast back, so bfloat16 programs
get float32 attention here.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'cpu_attention.cc')
FLAGS = ('-O3', '-march=native', '-std=c++17', '-shared', '-fPIC', '-fno-math-errno')


class BuildError(RuntimeError):
  pass


def cache_dir() -> str:
  return os.environ.get('GCD_JAX_EXT_DIR') or os.path.join(os.path.expanduser('~'), '.cache', 'gcd-jax', 'ext')


def _cpu_id() -> str:
  """The CPU's feature flags (-march=native code is only valid on a CPU that has them)."""
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith(('flags', 'Features')):
          return line
  except OSError:
    pass
  return platform.processor() or platform.machine()


def _library_path() -> str:
  import jaxlib  # pylint: disable=g-import-not-at-top
  with open(SOURCE, 'rb') as f:
    key = hashlib.sha256(f.read() + jaxlib.__version__.encode() + _cpu_id().encode() + ' '.join(FLAGS).encode())
  return os.path.join(cache_dir(), f'gcd_attention_{key.hexdigest()[:16]}.so')


def build() -> str:
  """Compiles cpu_attention.cc if the cache has no library for this source/jaxlib/CPU; returns its path.
  Written to a temporary file and renamed, so a failed or interrupted build leaves nothing behind."""
  path = _library_path()
  if os.path.exists(path):
    return path
  cxx = os.environ.get('CXX') or shutil.which('g++') or shutil.which('c++') or shutil.which('clang++')
  if not cxx or not shutil.which(cxx):
    raise BuildError(f'no C++ compiler found ({cxx or "set $CXX or install g++"})')
  os.makedirs(os.path.dirname(path), exist_ok=True)
  fd, tmp = tempfile.mkstemp(suffix='.so', dir=os.path.dirname(path))
  os.close(fd)
  try:
    cmd = [cxx, *FLAGS, '-I', jax.ffi.include_dir(), SOURCE, '-o', tmp]
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if r.returncode:
      errors = [l for l in r.stderr.splitlines() if 'error' in l] or r.stderr.strip().splitlines()[-1:]
      raise BuildError(f'{cxx} exited with status {r.returncode} compiling {SOURCE}: '
                       f'{errors[0].strip() if errors else "no output"}')
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return path


@functools.cache
def _register() -> str:
  """Builds (if needed), loads and registers the kernels; returns '' or the reason they are unavailable."""
  import ctypes  # pylint: disable=g-import-not-at-top
  try:
    lib = ctypes.cdll.LoadLibrary(build())
  except (BuildError, OSError) as e:
    return str(e)
  jax.ffi.register_ffi_target('gcd_attention_fwd', jax.ffi.pycapsule(lib.GcdAttentionForward), platform='cpu')
  jax.ffi.register_ffi_target('gcd_attention_bwd', jax.ffi.pycapsule(lib.GcdAttentionBackward), platform='cpu')
  return ''


_warned = []


def available_or_log() -> bool:
  """Whether the kernel is built and registered; logs the reason once when not (attention.py's `auto` then uses `deferred`)."""
  why = _register()
  if why and not _warned:
    _warned.append(why)
    logging.getLogger('gcd_jax').warning('fused CPU attention unavailable, using the XLA path: %s', why)
  return not why


def require():
  why = _register()
  if why:
    raise BuildError(f"attention 'fused' needs its C++ kernel, which could not be built: {why}. "
                     "Install a C++ compiler or use --config.model.attention=deferred.")


def _forward(q, k, v, scale):
  n, lq, h, _ = q.shape
  return jax.ffi.ffi_call('gcd_attention_fwd', (jax.ShapeDtypeStruct(q.shape, jnp.float32),
                                                jax.ShapeDtypeStruct((n, h, lq), jnp.float32)),
                          vmap_method='sequential')(q, k, v, scale=np.float32(scale))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _attention(q, k, v, scale):
  return _forward(q, k, v, scale)[0]


def _attention_fwd(q, k, v, scale):
  o, lse = _forward(q, k, v, scale)
  return o, (q, k, v, o, lse)


def _attention_bwd(scale, res, do):
  q, k, v, o, lse = res
  return tuple(jax.ffi.ffi_call('gcd_attention_bwd', tuple(jax.ShapeDtypeStruct(a.shape, jnp.float32)
                                                           for a in (q, k, v)),
                                vmap_method='sequential')(q, k, v, o, lse, do.astype(jnp.float32),
                                                          scale=np.float32(scale)))


_attention.defvjp(_attention_fwd, _attention_bwd)


def fused_attention(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
  """q [N, Lq, H, D], k/v [N, Lk, H, D] → [N, Lq, H, D], scale 1/√D; computed in float32, returned in q's dtype."""
  require()
  dtype = q.dtype
  out = _attention(q.astype(jnp.float32), k.astype(jnp.float32), v.astype(jnp.float32), float(q.shape[-1]) ** -0.5)
  return out.astype(dtype)
