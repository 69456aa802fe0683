"""The attention implementations agree with XLA's materialised softmax attention (values and gradients).

`fused` is the C++ XLA:CPU kernel (gcd_jax/models/cpu_attention.cc), built by the first test that uses it.

`flash` is the Pallas TPU kernel, run here in Pallas' TPU interpret mode on CPU (the same kernel code, the
same block tiling); under a mesh it runs inside shard_map over the row axes.
"""

import functools
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas import tpu as pltpu
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from gcd_jax.models import attention


def _qkv(n, lq, lk, h=2, d=16, seed=0):
  kq, kk, kv = jax.random.split(jax.random.key(seed), 3)
  return (jax.random.normal(kq, (n, lq, h, d)), jax.random.normal(kk, (n, lk, h, d)),
          jax.random.normal(kv, (n, lk, h, d)))


def _xla(q, k, v):
  return jax.nn.dot_product_attention(q, k, v, implementation='xla')


def _loss(fn):
  return lambda q, k, v: jnp.sum(jnp.sin(fn(q, k, v)))


def _under(impl, **kw):
  def fn(q, k, v):
    with attention.use_backend(attention.Backend(impl=impl, **kw)):
      return attention.dot_product_attention(q, k, v)
  return fn


@pytest.mark.parametrize('lq,lk', [(512, 512), (1024, 512)])
def test_flash_kernel_matches_xla(lq, lk):
  q, k, v = _qkv(2, lq, lk)
  with pltpu.force_tpu_interpret_mode():
    out = jax.jit(_under('flash'))(q, k, v)
    grads = jax.jit(jax.grad(_loss(_under('flash')), argnums=(0, 1, 2)))(q, k, v)
  np.testing.assert_allclose(out, _xla(q, k, v), atol=2e-5)
  ref = jax.grad(_loss(_xla), argnums=(0, 1, 2))(q, k, v)
  for g, r in zip(grads, ref):
    np.testing.assert_allclose(g, r, atol=1e-4)


def test_flash_under_mesh_runs_per_device_rows():
  """shard_map over the 'data' rows of a 2-device mesh: same values as one device's XLA attention."""
  mesh = Mesh(np.array(jax.devices()[:2]), ('data',))
  q, k, v = (jax.device_put(a, NamedSharding(mesh, P('data'))) for a in _qkv(4, 512, 512, seed=1))
  with pltpu.force_tpu_interpret_mode():
    out = jax.jit(_under('flash', mesh=mesh, row_axes=('data',)))(q, k, v)
  np.testing.assert_allclose(out, _xla(q, k, v), atol=2e-5)


def test_flash_leaves_short_sequences_to_xla():
  """Temporal attention (14 frames) and the 1-token cross-attention are below the kernel's block: XLA path
  (no Pallas call is traced, so this runs without interpret mode)."""
  for lq, lk in [(14, 14), (96, 1), (512, 14)]:
    q, k, v = _qkv(3, lq, lk)
    np.testing.assert_allclose(jax.jit(_under('flash'))(q, k, v), _xla(q, k, v), atol=1e-6)


@pytest.mark.parametrize('lq,lk', [(96, 96), (1536, 1536), (84, 1)])
def test_deferred_matches_xla(lq, lk):
  q, k, v = _qkv(3, lq, lk, seed=2)
  fn = _under('deferred')
  np.testing.assert_allclose(jax.jit(fn)(q, k, v), _xla(q, k, v), atol=2e-6)
  g = jax.jit(jax.grad(_loss(fn), argnums=(0, 1, 2)))(q, k, v)
  for a, b in zip(g, jax.grad(_loss(_xla), argnums=(0, 1, 2))(q, k, v)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=2e-5)


def test_deferred_bfloat16_close_to_float32():
  q, k, v = _qkv(2, 256, 256, seed=3)
  out = jax.jit(_under('deferred'))(*(a.astype(jnp.bfloat16) for a in (q, k, v)))
  assert out.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(out, np.float32), _xla(q, k, v), atol=3e-2)


def _needs_compiler():
  """The fused kernel is built with the host's C++ compiler; a host without one runs `deferred` (tested below).
  A compiler that is there but fails to build the kernel is a failure, not a skip."""
  import shutil  # pylint: disable=g-import-not-at-top
  if not (os.environ.get('CXX') or shutil.which('g++') or shutil.which('c++') or shutil.which('clang++')):
    pytest.skip('no C++ compiler on this host: the fused CPU attention kernel cannot be built')


# Shapes the models use and the kernel's edge cases: 1536/384-token spatial attention, 14-frame temporal, the
# 1-token cross-attention, key counts that are not a multiple of the vector width, heads of 8 to 80 channels,
# a partial last group of queries (100 = 12·8 + 4).
FUSED_SHAPES = [(2, 1536, 1536, 2, 16), (3, 96, 96, 2, 16), (4, 14, 14, 2, 16), (2, 84, 1, 2, 16),
                (2, 100, 37, 3, 8), (1, 50, 70, 1, 20), (1, 257, 257, 2, 80), (2, 64, 64, 5, 64)]


@pytest.mark.parametrize('n,lq,lk,h,d', FUSED_SHAPES)
def test_fused_matches_xla(n, lq, lk, h, d):
  """The kernel itself on every shape (the dispatcher sends < 64 keys to `deferred`, see below)."""
  from gcd_jax.models import cpu_attention  # pylint: disable=g-import-not-at-top
  _needs_compiler()
  q, k, v = _qkv(n, lq, lk, h=h, d=d, seed=4)
  fn = cpu_attention.fused_attention
  np.testing.assert_allclose(jax.jit(fn)(q, k, v), _xla(q, k, v), atol=2e-6)
  g = jax.jit(jax.grad(_loss(fn), argnums=(0, 1, 2)))(q, k, v)
  for a, b in zip(g, jax.grad(_loss(_xla), argnums=(0, 1, 2))(q, k, v)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=lq * 2e-6)  # dv sums Lq terms


def test_fused_extreme_scores_and_bfloat16():
  """Scores far apart (a peaked softmax: exp underflows for all but one key) and large in magnitude stay
  exact; bfloat16 inputs are computed in float32 and returned as bfloat16."""
  _needs_compiler()
  q, k, v = _qkv(2, 96, 96, seed=5)
  q = q * 40.0
  np.testing.assert_allclose(jax.jit(_under('fused'))(q, k, v), _xla(q, k, v), atol=2e-5)
  qb, kb, vb = (a.astype(jnp.bfloat16) for a in _qkv(2, 256, 256, seed=3))
  out = jax.jit(_under('fused'))(qb, kb, vb)
  assert out.dtype == jnp.bfloat16
  want = _xla(*(a.astype(jnp.float32) for a in (qb, kb, vb)))
  np.testing.assert_allclose(np.asarray(out, np.float32), want, atol=1e-2)


def test_fused_under_mesh_runs_per_device_rows():
  """Under a 2-device mesh the kernel runs per device inside shard_map (values and gradients); rows that do
  not split evenly over the mesh go to the XLA path instead of failing."""
  _needs_compiler()
  mesh = Mesh(np.array(jax.devices()[:2]), ('data',))
  fn = _under('fused', mesh=mesh, row_axes=('data',))
  for n in (4, 3):
    q, k, v = (jax.device_put(a, NamedSharding(mesh, P('data') if n % 2 == 0 else P())) for a in _qkv(n, 64, 64, seed=1))
    np.testing.assert_allclose(jax.jit(fn)(q, k, v), _xla(q, k, v), atol=2e-6)
    g = jax.jit(jax.grad(_loss(fn), argnums=(0, 1, 2)))(q, k, v)
    for a, b in zip(g, jax.grad(_loss(_xla), argnums=(0, 1, 2))(q, k, v)):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=2e-4)
  assert 'gcd_attention_fwd' in jax.jit(fn).lower(*_qkv(4, 64, 64)).as_text()
  # Fewer than 64 keys (temporal attention, the 1-token cross-attention): XLA's path, which is faster there.
  assert 'gcd_attention_fwd' not in jax.jit(fn).lower(*_qkv(4, 64, 14)).as_text()


def test_fused_build_failure_is_clear(monkeypatch, tmp_path):
  """Without a compiler: `auto` falls back to `deferred`; an explicit `fused` names the problem and the fix."""
  from gcd_jax.models import cpu_attention  # pylint: disable=g-import-not-at-top
  monkeypatch.setenv('GCD_JAX_EXT_DIR', str(tmp_path / 'ext'))
  for cxx, why in ((str(tmp_path / 'no-such-compiler'), 'no C++ compiler'), ('false', 'exited with status 1')):
    monkeypatch.setenv('CXX', cxx)
    monkeypatch.setattr(cpu_attention, '_register', functools.cache(cpu_attention._register.__wrapped__))
    with pytest.raises(cpu_attention.BuildError, match=re.escape(why) + '.*attention=deferred'):
      cpu_attention.require()
  assert not list((tmp_path / 'ext').iterdir())  # the failed build left nothing behind
  # A config that names `fused` is refused when validated, before a command writes anything.
  from gcd_jax.models import config as model_config, presets  # pylint: disable=g-import-not-at-top
  cfg = presets.get_config('tiny')
  cfg.attention = 'fused'
  with pytest.raises(model_config.ConfigError, match='attention=deferred'):
    model_config.validate_model_config(cfg)
  q, k, v = _qkv(2, 32, 32)
  np.testing.assert_allclose(jax.jit(_under('auto'))(q, k, v), _xla(q, k, v), atol=2e-6)


def test_resolve_and_bad_name():
  assert attention.resolve('auto', 'tpu') == 'flash'
  assert attention.resolve('auto', 'gpu') == 'cudnn'
  assert attention.resolve('auto', 'cpu') == 'fused'
  assert attention.resolve('xla', 'tpu') == 'xla'
  with pytest.raises(ValueError, match='use one of'):
    with attention.use_backend(attention.Backend(impl='splash')):
      pass
