"""The attention implementations agree with XLA's materialised softmax attention (values and gradients).

`flash` is the Pallas TPU kernel, run here in Pallas' TPU interpret mode on CPU (the same kernel code, the
same block tiling); under a mesh it runs inside shard_map over the row axes.
"""

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


def test_resolve_and_bad_name():
  assert attention.resolve('auto', 'tpu') == 'flash'
  assert attention.resolve('auto', 'gpu') == 'cudnn'
  assert attention.resolve('auto', 'cpu') == 'deferred'
  assert attention.resolve('xla', 'tpu') == 'xla'
  with pytest.raises(ValueError, match='use one of'):
    with attention.use_backend(attention.Backend(impl='splash')):
      pass
