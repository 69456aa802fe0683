"""Starting training from a converted checkpoint (`--config.init_checkpoint`, SVD → GCD camera layers) and EMA.

* `initial_weights` loads every stored tensor onto its training sharding; an SVD-style checkpoint (no camera
  path) leaves exactly the camera layers to a fresh init when `init_missing`, and is refused otherwise;
* an in-process `train()` run from a checkpoint with EMA on: the EMA after step k is
  d·EMA_{k−1} + (1 − d)·params_k with EMA_0 = the checkpoint's weights — so the run really started from them.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from gcd_jax.train import checkpoint as ckpt_lib
from gcd_jax.train import sharding as sh
from gcd_jax.train import train_step as ts
from gcd_jax.train import trainer
from tests.fixtures_evaluate import tiny_checkpoint  # noqa: F401  (session fixture)
from tests.fixtures_train import tiny_config


@pytest.fixture(scope='module')
def svd_checkpoint(tmp_path_factory):
  """A `tiny_svd` checkpoint: the tiny U-Net without the camera embedder / aux embedding (like SVD's)."""
  from configs import models  # pylint: disable=g-import-not-at-top
  from gcd_jax.evaluate import generator  # pylint: disable=g-import-not-at-top
  out = str(tmp_path_factory.mktemp('svd_ckpt') / 'tiny_svd')
  return generator.write_random_checkpoint(out, models.get_config('tiny_svd'), seed=5)


def _stored_network(path):
  from gcd_jax.convert import checkpoint_io  # pylint: disable=g-import-not-at-top
  network, _, _ = checkpoint_io.restore_model_checkpoint(path, shardings=None)
  return ts.ParamLayout.of(network).flat(network)


def _initial(config):
  builders, layouts = trainer.build_layouts(config)
  mesh = sh.make_mesh(config.mesh.shape, config.mesh.axes)
  tx, _ = ts.make_optimizer(config.optim)
  _, specs = ts.state_specs(config, layouts['network'], tx, mesh)
  fspecs = ts.frozen_specs(config, {k: v for k, v in layouts.items() if k != 'network'}, mesh)
  params, frozen = trainer.initial_weights(config, builders, layouts, fspecs, specs['params'], mesh, log=lambda *_: None)
  return params, frozen, specs, mesh


def test_init_from_svd_checkpoint_fills_exactly_the_camera_layers(svd_checkpoint):
  stored = _stored_network(svd_checkpoint)
  params, frozen, specs, mesh = _initial(tiny_config('data=synthetic,batch=8,frames=3',
                                                     init_checkpoint=svd_checkpoint))
  missing = sorted(set(params) - set(stored))
  assert missing and all(n.startswith(('camera_embedder.', 'unet.aux_label_emb.')) for n in missing), missing
  for n, v in params.items():
    assert v.sharding.is_equivalent_to(jax.sharding.NamedSharding(mesh, specs['params'][n]), v.ndim), n
    if n in stored:
      np.testing.assert_array_equal(np.asarray(v), np.asarray(stored[n]), err_msg=n)
    else:
      assert np.std(np.asarray(v)) > 0 or 'bias' in n, n  # fresh init, not zeros
  assert set(frozen) == {'vae', 'clip'}
  with pytest.raises(ValueError, match='init_missing'):
    _initial(tiny_config('data=synthetic,batch=8,frames=3', init_checkpoint=svd_checkpoint, init_missing=False))


def test_train_from_checkpoint_with_ema(tiny_checkpoint, tmp_path):  # noqa: F811
  decay = 0.75
  cfg = tiny_config('data=synthetic,steps=2,batch=8,frames=3', init_checkpoint=tiny_checkpoint,
                    features='precomputed', **{'optim.ema_decay': decay, 'optim.lr': 1e-3,
                                               'checkpoint.every_steps': 1, 'checkpoint.async_save': False,
                                               'checkpoint.max_to_keep': 0})
  summary = trainer.train(cfg, str(tmp_path), log=lambda *_: None)
  assert summary['step'] == 2
  p0 = _stored_network(tiny_checkpoint)
  builders, layouts = trainer.build_layouts(cfg)
  del builders
  mesh = sh.make_mesh(cfg.mesh.shape, cfg.mesh.axes)
  tx, _ = ts.make_optimizer(cfg.optim)
  abstract, specs = ts.state_specs(cfg, layouts['network'], tx, mesh)
  assert 'ema' in abstract
  manager = ckpt_lib.make_manager(str(tmp_path / 'checkpoints'), async_save=False, with_data=False)
  s1, _ = ckpt_lib.restore(manager, abstract, specs, mesh, step=1)
  s2, _ = ckpt_lib.restore(manager, abstract, specs, mesh, step=2)
  moved = 0
  for n in p0:
    a0, p1, p2 = (np.asarray(x, np.float64) for x in (p0[n], s1['params'][n], s2['params'][n]))
    e1, e2 = np.asarray(s1['ema'][n], np.float64), np.asarray(s2['ema'][n], np.float64)
    np.testing.assert_allclose(e1, decay * a0 + (1 - decay) * p1, atol=1e-6, err_msg=n)
    np.testing.assert_allclose(e2, decay * e1 + (1 - decay) * p2, atol=1e-6, err_msg=n)
    moved += not np.array_equal(p1, a0)
  assert moved > 0.9 * len(p0)  # Adam moved (almost) every tensor: the EMA lags the parameters
