"""Starting training from a converted SVD checkpoint (`--config.init_checkpoint`): `initial_weights` loads every
stored tensor onto its training sharding; an SVD-style checkpoint (no camera path) leaves exactly the camera
layers to a fresh init when `init_missing`, and is refused otherwise. (A full run from a GCD checkpoint,
with EMA, is in test_train_step.py.)
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from gcd_jax.train import sharding as sh
from gcd_jax.train import train_step as ts
from gcd_jax.train import trainer
from tests.fixtures_train import tiny_config


@pytest.fixture(scope='module')
def svd_checkpoint(tmp_path_factory):
  """A `tiny_svd` checkpoint: the tiny U-Net without the camera embedder / aux embedding (like SVD's)."""
  from gcd_jax.models import presets as models  # pylint: disable=g-import-not-at-top
  from tests import fixtures_models  # pylint: disable=g-import-not-at-top
  out = str(tmp_path_factory.mktemp('svd_ckpt') / 'tiny_svd')
  return fixtures_models.write_random_checkpoint(out, models.get_config('tiny_svd'), seed=5)


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
  params, frozen = trainer.initial_weights(config, builders, layouts, fspecs, specs['params'], mesh,
                                           trainer.weight_sources(config, '', layouts), log=lambda *_: None)
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
