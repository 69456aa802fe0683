"""Train step on 8 fake CPU devices: sharding rules on every leaf, loss decrease on a fixed batch (real GCD
network, the tiny preset with a one-level U-Net, + real GCD loss, CLIP and VAE in the step), the NaN guard,
restore onto a different mesh.

The run starts from a model checkpoint (`init_checkpoint`, as from `gcd-jax convert`) with EMA on, so one
compile also checks that every weight comes from the checkpoint and the EMA recursion."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from gcd_jax.train import checkpoint as ckpt_lib
from gcd_jax.train import input as input_lib
from gcd_jax.train import sharding as sh
from gcd_jax.train import train_step as ts
from gcd_jax.train import trainer
from tests.fixtures_train import INSTEP_ARG, INSTEP_OVERRIDES, tiny_config

STEPS = 6
EMA_DECAY = INSTEP_OVERRIDES['optim.ema_decay']


def test_logical_to_spec_hand_cases():
  mesh = sh.make_mesh((1, 4, 2), devices=jax.devices()[:8])
  rules = {'embed': 'fsdp', 'mlp': 'tensor', 'norm': None}
  # FSDP on the larger dim; 'mlp' → tensor (2) stays on the out dim.
  assert sh.logical_to_spec((320, 1280), ('embed', 'mlp'), rules, mesh) == P('fsdp', 'tensor')
  mesh8 = sh.make_mesh((1, 8, 1), devices=jax.devices()[:8])
  # tensor axis of size 1: fsdp moves to the largest divisible named dim.
  assert sh.logical_to_spec((320, 1280), ('embed', 'mlp'), rules, mesh8) == P(None, 'fsdp')
  assert sh.logical_to_spec((1280, 320), ('embed', 'mlp'), rules, mesh8) == P('fsdp')
  # conv kernel [3, 3, in, out]: spatial dims never sharded; 12 is not divisible by 8 → the 16-dim.
  assert sh.logical_to_spec((3, 3, 16, 12), (None, None, 'embed', 'mlp'), rules, mesh8) == P(None, None, 'fsdp')
  # nothing divisible → replicated; norms replicated; small leaves replicated.
  assert sh.logical_to_spec((13, 7), ('embed', 'mlp'), rules, mesh8) == P()
  assert sh.logical_to_spec((1280,), ('norm',), rules, mesh8) == P()
  assert sh.logical_to_spec((64, 64), ('embed', 'mlp'), rules, mesh8, min_shard_size=10_000) == P()
  # Without fsdp_largest the rules apply literally.
  assert sh.logical_to_spec((320, 1280), ('embed', 'mlp'), rules, mesh8, fsdp_largest=False) == P('fsdp')
  with pytest.raises(ValueError, match='needs 6 devices'):
    sh.make_mesh((1, 3, 2), devices=jax.devices()[:8])


@pytest.fixture(scope='module')
def init_checkpoint(tmp_path_factory):
  """A model checkpoint (as from `gcd-jax convert`) with seeded random weights for the run's model."""
  from tests import fixtures_models  # pylint: disable=g-import-not-at-top
  model_cfg = tiny_config(INSTEP_ARG, **INSTEP_OVERRIDES).model
  return fixtures_models.write_random_checkpoint(str(tmp_path_factory.mktemp('init') / 'tiny'), model_cfg, seed=0)


@pytest.fixture(scope='module')
def trained(tmp_path_factory, init_checkpoint):
  """A tiny in-step run on a (1, 8, 1) mesh: STEPS updates on ONE fixed batch of 8 videos × 3 frames,
  from `init_checkpoint`'s weights (network, VAE, CLIP), EMA on."""
  cfg = tiny_config(INSTEP_ARG, init_checkpoint=init_checkpoint, **INSTEP_OVERRIDES)  # test_workdir's program too
  mesh = sh.make_mesh(cfg.mesh.shape, cfg.mesh.axes)
  builders, layouts = trainer.build_layouts(cfg)
  net_layout = layouts['network']
  frozen_layouts = {k: v for k, v in layouts.items() if k != 'network'}
  tx, schedule = ts.make_optimizer(cfg.optim)
  abstract, specs = ts.state_specs(cfg, net_layout, tx, mesh)
  fspecs = ts.frozen_specs(cfg, frozen_layouts, mesh)
  params, frozen = trainer.initial_weights(cfg, builders, layouts, fspecs, specs['params'], mesh,
                                           trainer.weight_sources(cfg, '', layouts))
  state = ts.initial_state(cfg, net_layout, params, tx, specs, mesh, cfg.seed)
  ex = input_lib.SyntheticExample(0, 3, 32, 48)
  batch = {k: np.stack([ex(i)[k] for i in range(8)]) for k in input_lib.TRAIN_KEYS}
  babs = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in batch.items()}
  step = ts.jit_train_step(ts.make_train_step(cfg, net_layout, frozen_layouts['vae'], frozen_layouts['clip'], tx,
                                              schedule), mesh, specs, fspecs, babs)
  gbatch = sh.to_global(batch, mesh)

  def eval_loss(st):
    """Loss of `st` at step 0 with the run's key: same σ, noise, dropout → comparable across params."""
    # `st['step'] * 0`, not a fresh jnp.zeros: the probe's step must carry the state's sharding, or jit traces
    # and compiles the train step a second time (~55 s) for the unsharded scalar.
    probe = jax.tree.map(jnp.copy, dict(st, step=st['step'] * 0))
    return float(step(probe, frozen, gbatch)[1]['loss'])

  loss0 = eval_loss(state)
  losses, history = [], [jax.device_get({k: state[k] for k in ('params', 'ema')})]
  for _ in range(STEPS):
    state, m = step(state, frozen, gbatch)
    losses.append(float(m['loss']))
    history.append(jax.device_get({k: state[k] for k in ('params', 'ema')}))
  return dict(cfg=cfg, mesh=mesh, state=state, specs=specs, abstract=abstract, fspecs=fspecs, frozen=frozen,
              loss0=loss0, loss_end=eval_loss(state), losses=losses, step=step, gbatch=gbatch, layout=net_layout,
              history=history, tmp=tmp_path_factory.mktemp('train_step'))


def test_starts_from_the_checkpoint_and_tracks_ema(trained, init_checkpoint):
  """Every trainable and frozen weight at step 0 is the checkpoint's; EMA_k = d·EMA_{k−1} + (1 − d)·params_k
  with EMA_0 = the initial weights (GCD trains without EMA, §3; the option follows the usual recursion)."""
  from gcd_jax.convert import checkpoint_io  # pylint: disable=g-import-not-at-top
  network, vae, clip = checkpoint_io.restore_model_checkpoint(init_checkpoint, shardings=None)
  stored = ts.ParamLayout.of(network).flat(network)
  h = trained['history']
  assert set(h[0]['params']) == set(stored)
  for n, v in stored.items():
    np.testing.assert_array_equal(h[0]['params'][n], np.asarray(v), err_msg=n)
    np.testing.assert_array_equal(h[0]['ema'][n], np.asarray(v), err_msg=n)
  for name, module in (('vae', vae), ('clip', clip)):
    want = ts.ParamLayout.of(module).flat(module)
    for n, v in want.items():
      np.testing.assert_array_equal(np.asarray(trained['frozen'][name][n]), np.asarray(v), err_msg=f'{name}.{n}')
  d = EMA_DECAY
  for k in range(1, len(h)):
    for n in stored:
      want = d * np.asarray(h[k - 1]['ema'][n], np.float64) + (1 - d) * np.asarray(h[k]['params'][n], np.float64)
      np.testing.assert_allclose(h[k]['ema'][n], want, rtol=1e-6, atol=1e-7, err_msg=f'step {k} {n}')
  moved = sum(not np.array_equal(h[-1]['params'][n], h[0]['params'][n]) for n in stored)
  assert moved > 0.9 * len(stored)


def test_every_leaf_has_the_rule_sharding(trained):
  state, specs, mesh = trained['state'], trained['specs'], trained['mesh']
  flat_state = jax.tree_util.tree_flatten_with_path(state)[0]
  flat_specs = jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, P))
  assert len(flat_state) == len(flat_specs)
  sharded = 0
  for (path, leaf), spec in zip(flat_state, flat_specs):
    want = jax.sharding.NamedSharding(mesh, spec)
    assert leaf.sharding.is_equivalent_to(want, leaf.ndim), (jax.tree_util.keystr(path), leaf.sharding, spec)
    sharded += 'fsdp' in str(spec)
  # Adam moments follow their parameter; the count is replicated.
  import optax  # pylint: disable=g-import-not-at-top
  mu = optax.tree_utils.tree_get(state['opt_state'], 'mu')
  for name in trained['layout'].names:
    assert mu[name].sharding.spec == state['params'][name].sharding.spec
  counts = [x for x in jax.tree.leaves(state['opt_state']) if x.ndim == 0]  # Adam + schedule step counts
  assert counts and all(c.sharding.is_fully_replicated for c in counts)
  # A known leaf, by hand: time_embedding.linear_1 kernel [32, 128] → 128 over fsdp.
  assert specs['params']['unet.time_embedding.linear_1.kernel'] == P(None, 'fsdp')
  # FSDP actually shards most of the bytes.
  pbytes = {n: a.size for n, a in state['params'].items()}
  frac = sum(v for n, v in pbytes.items() if 'fsdp' in str(specs['params'][n])) / sum(pbytes.values())
  assert frac > 0.9, frac
  for name, fl in trained['frozen'].items():
    for n, a in fl.items():
      assert a.sharding.spec == trained['fspecs'][name][n]


def test_loss_decreases_on_a_fixed_batch(trained):
  assert np.all(np.isfinite(trained['losses']))
  # Same σ/noise/dropout (step-0 key) before and after STEPS Adam updates.
  assert trained['loss_end'] < 0.7 * trained['loss0'], (trained['loss0'], trained['loss_end'], trained['losses'])


def test_nonfinite_guard_keeps_state_and_names_leaves(trained):
  st = jax.tree.map(jnp.copy, trained['state'])
  before = np.asarray(st['params']['unet.conv_in.kernel'])
  bad = dict(trained['gbatch'])
  bad['jpg'] = jnp.full_like(bad['jpg'], jnp.nan)
  new, m = trained['step'](st, trained['frozen'], bad)
  assert not bool(m['finite'])
  np.testing.assert_array_equal(np.asarray(new['params']['unet.conv_in.kernel']), before)
  assert int(new['step']) == int(trained['state']['step'])
  report = ts.nonfinite_report(jax.device_get(m), trained['layout'].names)
  assert 'loss=nan' in report and 'unet.' in report


def test_restore_onto_a_different_mesh(trained):
  mngr = ckpt_lib.make_manager(str(trained['tmp'] / 'ckpt'), with_data=False, async_save=True)
  ckpt_lib.save(mngr, 6, trained['state'], force=True)
  mngr.wait_until_finished()
  # 8 devices (1, 8, 1) → 4 devices as (2, 2, 1): other shard counts, other devices.
  mesh4 = sh.make_mesh((2, 2, 1), devices=jax.devices()[4:])
  _, layouts = trainer.build_layouts(trained['cfg'])
  tx, _ = ts.make_optimizer(trained['cfg'].optim)
  abstract, specs4 = ts.state_specs(trained['cfg'], layouts['network'], tx, mesh4)
  restored, step = ckpt_lib.restore(mngr, abstract, specs4, mesh4)
  mngr.close()
  assert step == 6
  n = 'unet.time_embedding.linear_1.kernel'
  assert restored['params'][n].sharding.spec == P(None, 'fsdp')
  assert set(restored['params'][n].sharding.device_set) == set(jax.devices()[4:])
  for a, b in zip(jax.tree.leaves(trained['state']), jax.tree.leaves(restored)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
