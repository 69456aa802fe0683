"""One loop: a training workdir is a model for `sample`, `evaluate` and `export` (gcd_jax/train/workdir.py).

One tiny in-step run (8 devices, EMA on, 2 steps, subprocess: `gcd-jax train`; the program of
test_train_step.py, so it loads from the suite's compilation cache when that ran first) then, in this process:
* resolve_model picks the latest step and EMA weights, exports once (no train step compiled) and reuses it;
  the exported network equals the checkpoint's EMA (or raw) params, its VAE / CLIP equal W/frozen;
* --step N / --weights raw, and the errors for an unknown step or EMA on a run without it;
* `gcd-jax sample --checkpoint W` takes frame size and count from the run's config (32×48, 3 frames);
* `gcd-jax evaluate --checkpoint W` and `gcd-jax export --to diffusers W` run;
* re-running `train --export` on the finished run exports without compiling a train step.
"""

from __future__ import annotations

import json
import os
import subprocess

import numpy as np
import pytest

from tests.fixtures_evaluate import data_preset, eval_tfds, write_test_video  # noqa: F401
from tests.fixtures_train import (INSTEP_ARG, INSTEP_DEVICES, INSTEP_OVERRIDES, REPO, override_flags, subprocess_env,
                                  train_args, train_cmd)

CONFIG = f'configs/tiny.py:{INSTEP_ARG},steps=2'
OVERRIDES = override_flags(INSTEP_OVERRIDES) + ['--config.checkpoint.every_steps=1']


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  wd = str(tmp_path_factory.mktemp('run'))
  # XLA's default optimisation level (not quick_compile): the same compile options as the in-process program.
  env = subprocess_env(INSTEP_DEVICES, str(tmp_path_factory.mktemp('xla_cache')))
  r = subprocess.run(train_cmd(wd, CONFIG, OVERRIDES), env=env, capture_output=True, text=True, timeout=900)
  assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
  return dict(workdir=wd, env=env)


def _cli(*argv):
  from gcd_jax import cli  # pylint: disable=g-import-not-at-top
  return cli.main(list(argv))


def test_resolve_model_latest_ema_and_exact_weights(run):
  from gcd_jax.convert import checkpoint_io  # pylint: disable=g-import-not-at-top
  from gcd_jax.train import train_step as ts  # pylint: disable=g-import-not-at-top
  from gcd_jax.train import workdir  # pylint: disable=g-import-not-at-top
  wd = run['workdir']
  assert workdir.checkpoint_steps(wd) == [1, 2]
  logs = []
  path = workdir.resolve_model(wd, log=logs.append)
  assert path == os.path.join(wd, 'models', 'step_00000002_ema') and len(logs) == 1
  assert workdir.resolve_model(wd, log=logs.append) == path and len(logs) == 1  # exported once, then reused
  meta = checkpoint_io.read_metadata(path)
  assert meta['source']['step'] == 2 and meta['source']['weights'] == 'ema'
  assert meta['train_config']['data']['height'] == 32 and meta['train_config']['model']['num_frames'] == 3
  network, vae, _ = checkpoint_io.restore_model_checkpoint(path)
  layout = ts.ParamLayout.of(network)
  ema = workdir.restore_network_params(wd, 2, 'ema', layout)
  raw = workdir.restore_network_params(wd, 2, 'params', layout)
  got = layout.flat(network)
  assert all(np.array_equal(np.asarray(got[n]), np.asarray(ema[n])) for n in layout.names)
  assert any(not np.array_equal(np.asarray(raw[n]), np.asarray(ema[n])) for n in layout.names)
  _, frozen_vae, _ = checkpoint_io.restore_model_checkpoint(os.path.join(wd, 'frozen'), components=('vae',))
  a, b = checkpoint_io._pure(vae), checkpoint_io._pure(frozen_vae)  # pylint: disable=protected-access
  assert all(np.array_equal(x, y) for x, y in zip(jax_leaves(a), jax_leaves(b)))
  raw_path = workdir.resolve_model(wd, step=1, weights='raw', log=logs.append)
  assert checkpoint_io.read_metadata(raw_path)['source'] == dict(kind='gcd-jax train', workdir=wd, step=1,
                                                                  weights='params')
  with pytest.raises(workdir.WorkdirError, match=r'no checkpoint at step 7; available steps: \[1, 2\]'):
    workdir.resolve_model(wd, step=7)
  with pytest.raises(workdir.WorkdirError, match='--step / --weights apply to training workdirs only'):
    workdir.resolve_model(path, step=1)


def test_a_run_started_from_another_workdir_exports(run, tmp_path):
  """`--config.init_checkpoint=W1` (a workdir: the trainer takes its latest raw weights, as configs/demo.py's
  stages do) leaves the new run without a frozen/ folder; exporting it takes VAE and CLIP from W1's model."""
  import shutil  # pylint: disable=g-import-not-at-top
  from gcd_jax.convert import checkpoint_io  # pylint: disable=g-import-not-at-top
  from gcd_jax.train import workdir  # pylint: disable=g-import-not-at-top
  first = run['workdir']
  second = str(tmp_path / 'stage2')
  shutil.copytree(os.path.join(first, 'checkpoints'), os.path.join(second, 'checkpoints'))
  with open(os.path.join(first, 'config.json')) as f:
    config = json.load(f)
  config['init_checkpoint'] = first
  with open(os.path.join(second, 'config.json'), 'w') as f:
    json.dump(config, f)
  path = workdir.resolve_model(second, weights='raw', log=lambda *_: None)
  _, vae, _ = checkpoint_io.restore_model_checkpoint(path, components=('vae',))
  _, frozen_vae, _ = checkpoint_io.restore_model_checkpoint(os.path.join(first, 'frozen'), components=('vae',))
  a, b = checkpoint_io._pure(vae), checkpoint_io._pure(frozen_vae)  # pylint: disable=protected-access
  assert all(np.array_equal(x, y) for x, y in zip(jax_leaves(a), jax_leaves(b)))
  config['init_checkpoint'] = str(tmp_path / 'gone')  # the first run deleted: the error names it and the fix
  with open(os.path.join(second, 'config.json'), 'w') as f:
    json.dump(config, f)
  with pytest.raises(workdir.WorkdirError, match='init_checkpoint .*gone; put that folder back'):
    workdir.resolve_model(second, step=1, weights='raw')
  assert not os.path.exists(os.path.join(second, 'models', 'step_00000001_raw'))


def jax_leaves(tree):
  import jax  # pylint: disable=g-import-not-at-top
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_sample_evaluate_export_take_the_workdir(run, eval_tfds, tmp_path):  # noqa: F811
  wd = run['workdir']
  video = write_test_video(str(tmp_path / 'in.mp4'))
  out = tmp_path / 'sample'
  assert _cli('sample', '--checkpoint', wd, '--input', video, '--out', str(out), '--steps', '2',
              '--num-samples', '1', '--no-progress', '--frame-stride', '1') == 0
  info = json.loads((out / 'info.json').read_text())
  assert len(info['clip_frames']) == 3  # the run's frame count, not SVD's 14
  from gcd_jax.evaluate import media  # pylint: disable=g-import-not-at-top
  assert media.count_and_size(str(out / 'sample_0.mp4'))[1] in ((48, 32), (32, 48))  # the run's size
  ev_out = tmp_path / 'eval'
  assert _cli('evaluate', '--checkpoint', wd, '--data', data_preset(eval_tfds), '--num-samples', '1', '--steps',
              '2', '--no-progress', '--decoding-t', '3', '--out', str(ev_out)) == 0
  assert json.loads((ev_out / 'results.json').read_text())['num_scenes'] == 2
  assert _cli('export', '--to', 'diffusers', wd, '--weights', 'raw', '--out', str(tmp_path / 'hf'),
              '--no-progress') == 0
  assert (tmp_path / 'hf' / 'unet' / 'config.json').exists()


def test_train_export_on_a_finished_run_compiles_nothing(run, tmp_path, capsys, monkeypatch):
  # In process (the same `gcd-jax train` command line, without a new interpreter): nothing here compiles.
  out = str(tmp_path / 'exported')
  monkeypatch.chdir(REPO)
  assert _cli('train', *train_args(run['workdir'], CONFIG, OVERRIDES), '--export', out) == 0
  stdout = capsys.readouterr().out
  assert 'already at step 2 of 2' in stdout and 'compiling the train step' not in stdout, stdout
  assert os.path.isfile(os.path.join(out, 'metadata.json'))
