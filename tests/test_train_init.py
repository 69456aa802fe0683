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


def test_fresh_unet_starts_as_the_reference_does():
  """unet.zero_init (sgm's `zero_module`): exactly the last layer of every residual branch (spatial and temporal
  ResBlock conv2, transformer proj_out) and conv_out start at zero, so a fresh U-Net outputs 0; every other
  kernel keeps PyTorch's default init. zero_init=False (how the demo model's stages 1-3 were trained) zeroes none."""
  params, _, _, _ = _initial(tiny_config('data=synthetic,batch=8,frames=3'))
  branch_ends = {n for n in params if n.startswith('unet.') and
                 n.rsplit('.', 2)[-2] in ('conv2', 'proj_out', 'conv_out')}
  assert any('temporal_res_block.conv2' in n for n in branch_ends)
  assert any('mid_block.attentions' in n for n in branch_ends) and 'unet.conv_out.kernel' in branch_ends
  zero = {n for n, v in params.items() if not np.any(np.asarray(v))}
  assert branch_ends <= zero, sorted(branch_ends - zero)
  assert all(n.endswith('.bias') for n in zero - branch_ends), sorted(zero - branch_ends)  # GroupNorm/LayerNorm biases
  legacy, _, _, _ = _initial(tiny_config('data=synthetic,batch=8,frames=3', **{'model.unet.zero_init': False}))
  assert not any(n.endswith('.kernel') for n, v in legacy.items() if not np.any(np.asarray(v)))


def test_growing_a_network_keeps_its_function(tmp_path):
  """configs/demo.py stage=4 adds attention blocks to a trained U-Net: with init_missing the new blocks start
  fresh and, their proj_out being zero, as the identity, so the grown network computes what the stored one
  did (the stage starts from the stored model, not from a perturbed one)."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from gcd_jax.convert import checkpoint_io  # pylint: disable=g-import-not-at-top
  from gcd_jax.models import presets as models  # pylint: disable=g-import-not-at-top
  from tests import fixtures_models  # pylint: disable=g-import-not-at-top
  small = models.get_config('tiny')
  assert tuple(small.unet.attention_resolutions) == (1,)
  path = fixtures_models.write_random_checkpoint(str(tmp_path / 'trained'), small, seed=7)
  config = tiny_config('data=synthetic,batch=8,frames=3', init_checkpoint=path)
  config.model.unet.attention_resolutions = (1, 2)
  params, _, _, _ = _initial(config)
  stored = _stored_network(path)
  added = sorted(set(params) - set(stored))
  assert added and all('.attentions.' in n for n in added), added
  assert not any(n.startswith('unet.down_blocks.0.') or n.startswith('unet.up_blocks.1.') for n in added), added
  builders, layouts = trainer.build_layouts(config)
  grown = layouts['network'].module(jax.device_get(params))
  old, _, _ = checkpoint_io.restore_model_checkpoint(path, shardings=None)
  rng = np.random.default_rng(0)
  b, t, h, w = 1, 3, 8, 8
  x = jnp.asarray(rng.standard_normal((b * t, h, w, 8)), jnp.float32)
  ts_ = jnp.asarray(rng.uniform(-1, 1, b * t), jnp.float32)
  ctx = jnp.asarray(rng.standard_normal((b * t, 1, small.unet.context_dim)), jnp.float32)
  y = jnp.asarray(rng.standard_normal((b * t, small.unet.adm_in_channels + small.unet.aux_emb_dim)), jnp.float32)
  want = old.unet(x, ts_, ctx, y, num_frames=t)
  got = grown.unet(x, ts_, ctx, y, num_frames=t)
  assert float(jnp.std(want)) > 0.1
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
