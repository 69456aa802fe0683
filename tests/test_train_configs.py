"""Training presets (configs/gcd.py, configs/tiny.py) and the one config loader (gcd_jax/config_flags.py)."""

from __future__ import annotations

import os

import pytest

from gcd_jax import config_flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load(spec):
  return config_flags.load_config(os.path.join(REPO, spec))


@pytest.mark.parametrize('traj,az', [('gradual', '90'), ('gradual', '180'), ('direct', '90'), ('direct', '180')])
def test_kubric_presets(traj, az):
  c = load(f'configs/gcd.py:data=kubric,traj={traj},az={az}')
  assert c.data.trajectory == f'kubric_{traj}_max{az}'
  assert c.model.camera.embedder == 'spherical' and c.model.unet.aux_emb_dim == 128
  # docs/reference.md §3: Adam 2e-5 (0.9, 0.999, 1e-8), no wd / clipping / warmup / EMA, 28 videos, ckpt every 1250.
  o = c.optim
  assert (o.lr, o.b1, o.b2, o.eps, o.weight_decay, o.grad_clip_norm, o.warmup_steps, o.ema_decay) == (
      2e-5, 0.9, 0.999, 1e-8, 0.0, 0.0, 0, 0.0)
  assert c.batch_size == 28 and c.checkpoint.every_steps == 1250 and c.seed == 1234
  assert c.model.dtype == 'bfloat16' and c.model.param_dtype == 'float32' and c.model.remat == 'full'
  assert c.data.num_frames == c.model.num_frames == 14 and (c.data.height, c.data.width) == (256, 384)
  assert dict(c.sharding.rules) == {'embed': 'fsdp', 'mlp': 'tensor', 'norm': None}
  assert tuple(c.mesh.axes) == ('data', 'fsdp', 'tensor')


def test_pardom_presets():
  rgb = load('configs/gcd.py:data=pardom,modality=rgb')
  sem = load('configs/gcd.py:data=pardom,modality=semantic')
  for c in (rgb, sem):
    assert c.model.camera.embedder == 'none' and c.model.unet.aux_emb_dim == 0  # PD: no camera (§3)
    assert c.data.dataset == 'pardom_4d'
  assert (rgb.diffusion.loss.pd_person_weight, rgb.diffusion.loss.pd_vehicle_weight) == (1.0, 1.0)
  assert (sem.diffusion.loss.pd_person_weight, sem.diffusion.loss.pd_vehicle_weight) == (7.0, 3.0)
  with pytest.raises(ValueError, match='modality'):
    load('configs/gcd.py:data=pardom,modality=depth')
  with pytest.raises(ValueError, match='key=value'):
    load('configs/gcd.py:dataset=kubric')


def test_overrides_and_cli_parsing(tmp_path, monkeypatch):
  rest, overrides = config_flags.split_overrides(
      ['--workdir', '/tmp/w', '--config.optim.lr=1e-5', '--config.mesh.shape', '(2,-1,1)',
       '--config.checkpoint.async_save=false'])
  assert rest == ['--workdir', '/tmp/w']
  c = config_flags.load_config('configs/tiny.py:data=synthetic,steps=5', overrides)
  assert c.total_steps == 5 and c.optim.lr == 1e-5 and tuple(c.mesh.shape) == (2, -1, 1)
  assert c.checkpoint.async_save is False and c.data.source == 'synthetic'
  with pytest.raises(config_flags.ConfigError, match='did you mean --config.optim.lr'):
    config_flags.load_config('configs/tiny.py', ['--config.optim.lrr=1'])
  with pytest.raises(config_flags.ConfigError, match='total_steps'):
    config_flags.load_config('configs/tiny.py', ['--config.total_steps=abc'])
  with pytest.raises(AttributeError):  # locked: a typo can never add a field
    c.optim.learning_rate = 1.0
  # Relative to the working directory first, then the installed package's configs/.
  monkeypatch.chdir(tmp_path)
  assert config_flags.load_config('configs/tiny.py').name == load('configs/tiny.py').name
  (tmp_path / 'mine.py').write_text('from configs import tiny\n\ndef get_config(arg=None):\n'
                                    '  c = tiny.get_config(arg)\n  c.total_steps = 7\n  return c\n')
  assert config_flags.load_config('mine.py:steps=3').total_steps == 7


def test_model_specs_share_the_loader():
  model, train = config_flags.load_model_or_training('tiny')
  assert train is None and 'unet' in model
  model2, train2 = config_flags.load_model_or_training('configs/tiny.py:frames=3')
  assert train2 is not None and model2.num_frames == 3
  with pytest.raises(config_flags.ConfigError):
    config_flags.load_model_or_training('configs/nope.py')
