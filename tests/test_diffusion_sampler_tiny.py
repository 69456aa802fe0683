"""The compiled sampling program with the real tiny GCD network + temporal VAE (docs/reference.md §2.4):
deterministic per key, different across keys, [B·T, H, W, 3] in [0, 1], traced once for repeated
calls, equal to the Python-loop variant and to the mesh-sharded run."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import Mesh

from gcd_jax.models import presets as models
from gcd_jax.diffusion.conditioner import Conditioner
from gcd_jax.diffusion.config import diffusion_config
from gcd_jax.diffusion.sampler import make_sample_fn
from gcd_jax.models.clip import build_clip
from gcd_jax.models.gcd import build_gcd_network
from gcd_jax.models.vae import build_vae
from tests.fixtures_diffusion import random_tiny, tiny_batch

B, T, HW = 2, 3, (16, 16)


@pytest.fixture(scope='module')
def setup():
  cfg = models.get_config('tiny')
  vae = random_tiny(build_vae, cfg, 1)
  clip = random_tiny(build_clip, cfg, 2)
  net = random_tiny(build_gcd_network, cfg, 3)
  batch = tiny_batch(cfg, B, T, HW)
  cond = nnx.jit(lambda c, b: c(b))(Conditioner(cfg, vae, clip), batch)
  dcfg = diffusion_config()
  dcfg.sampler.num_steps = 3
  dcfg.decode.chunk_size = 2  # T = 3: one 2-frame chunk + a 1-frame rest
  # One compiled program shared by both tests (a new make_sample_fn is a new jit cache).
  return dict(cfg=cfg, vae=vae, net=net, cond=cond, dcfg=dcfg, sample_fn=make_sample_fn(dcfg, num_frames=T))


def test_sampling_deterministic_and_compiled_once(setup):
  net, vae, cond, dcfg = (setup[k] for k in ('net', 'vae', 'cond', 'dcfg'))
  sample_fn = setup['sample_fn']
  a = sample_fn(net, vae, cond, jax.random.key(0))
  b = sample_fn(net, vae, cond, jax.random.key(0))
  c = sample_fn(net, vae, cond, jax.random.key(1))
  assert sample_fn.trace_count == 1  # three calls, one trace/compile
  assert a.shape == (B * T, *HW, 3) and a.dtype == jnp.float32
  a, b, c = map(np.asarray, (a, b, c))
  np.testing.assert_array_equal(a, b)
  diff = np.abs(a - c).max()
  inside = ((a > 0) & (a < 1)).mean()
  print(f'tiny sampling: seed 0 vs 1 max abs diff {diff:.3f}; fraction strictly inside (0,1) {inside:.2f}')
  assert diff > 1e-2
  assert a.min() >= 0.0 and a.max() <= 1.0 and inside > 0.05
  # new weights, same shapes → still no retrace (parameters are arguments, not constants)
  net2 = random_tiny(build_gcd_network, setup['cfg'], 4)
  d = np.asarray(sample_fn(net2, vae, cond, jax.random.key(0)))
  assert sample_fn.trace_count == 1 and np.abs(d - a).max() > 1e-3


def test_python_loop_and_mesh_agree(setup):
  """The stepwise variant (one jitted step, decoded separately) and the 2-device mesh program give the
  videos of the single-device program for the same key."""
  net, vae, cond, dcfg = (setup[k] for k in ('net', 'vae', 'cond', 'dcfg'))
  ref = np.asarray(setup['sample_fn'](net, vae, cond, jax.random.key(5)))
  seen = []
  loop_fn = make_sample_fn(dcfg, num_frames=T, python_loop=True, callback=lambda i, x: seen.append(i))
  loop = np.asarray(loop_fn(net, vae, cond, jax.random.key(5)))
  assert seen == list(range(dcfg.sampler.num_steps)) and loop_fn.trace_count == 1  # one step compile
  d_loop = np.abs(loop - ref).max()
  mesh = Mesh(np.asarray(jax.devices()[:2]), ('data',))
  sh = make_sample_fn(dcfg, num_frames=T, mesh=mesh)(net, vae, cond, jax.random.key(5))
  assert len(sh.sharding.device_set) == 2
  d_mesh = np.abs(np.asarray(sh) - ref).max()
  print(f'tiny videos: python loop vs jit {d_loop:.2e}, 2-device mesh vs 1 device {d_mesh:.2e}')
  assert d_loop < 1e-4 and d_mesh < 1e-4
  with pytest.raises(ValueError, match='split evenly'):
    bad_mesh = Mesh(np.asarray(jax.devices()[:4]), ('data',))
    make_sample_fn(dcfg, num_frames=T, mesh=bad_mesh, decode=False)(net, None, cond, jax.random.key(0))
