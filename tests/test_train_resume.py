"""The trainer as a process: preemption, resume and multi-host, through `gcd-jax train` in subprocesses (own
XLA_FLAGS each), all compared with ONE uninterrupted reference run (1 process × 8 fake CPU devices):

* resume equivalence: a run SIGKILLed after step k's checkpoint is committed, then restarted on the same
  workdir, logs exactly (bit-identical on CPU) the losses of an uninterrupted run — params, Adam state, step,
  RNG key and the Grain iterator position all come back;
* SIGTERM: the trainer saves the step it is at, waits for the commit and exits 143; SIGINT (Ctrl-C) the same
  with exit code 130;
* metrics.jsonl holds each step once after a resume;
* resuming a finished workdir with a different config is refused (one line, exit 2, nothing rewritten);
* multi-host on one machine: 2 processes × 4 fake CPU devices (jax.distributed on 127.0.0.1, a free port,
  launched by launch/local_multiprocess.py) log the losses of the reference run. Each host reads its own data
  shard (examples s, s+2, ...) and feeds it as its slice of the global batch; randomness is keyed by the
  global example index, so both layouts train on the same videos with the same noise. The two programs differ
  only in how the 8-way collectives are carried out (in-process vs gloo across processes), hence a tight
  tolerance rather than bit equality.

Tiny model, real GCD loss; the frozen CLIP/VAE features are precomputed (synthetic) here to keep compile time
down — the in-step path is covered by test_train_step.py. All runs share a persistent XLA compilation cache,
and LLVM compiles at -O0 (a few steps each: compiling is most of their time).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

from tests.fixtures_train import REPO, committed_steps, read_losses, subprocess_env, train_cmd, wait_for

CONFIG = 'configs/tiny.py:data=synthetic,steps=8,batch=8,frames=3'
OVERRIDES = ['--config.features=precomputed', '--config.checkpoint.every_steps=2',
             '--config.checkpoint.max_to_keep=0']


@pytest.fixture(scope='module')
def cache(tmp_path_factory):
  return str(tmp_path_factory.mktemp('xla_cache'))


@pytest.fixture(scope='module')
def reference(tmp_path_factory, cache):
  wd = str(tmp_path_factory.mktemp('uninterrupted'))
  r = subprocess.run(train_cmd(wd, CONFIG, OVERRIDES), env=subprocess_env(8, cache, quick_compile=True),
                     capture_output=True, text=True, timeout=900)
  assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
  losses = read_losses(wd)
  assert sorted(losses) == list(range(1, 9))
  assert committed_steps(wd) == [2, 4, 6, 8]
  return dict(losses=losses, workdir=wd)


def test_sigkill_then_resume_gives_identical_losses(tmp_path, cache, reference):
  wd = str(tmp_path / 'killed')
  env = subprocess_env(8, cache, quick_compile=True)
  log = open(tmp_path / 'first.log', 'w')
  proc = subprocess.Popen(train_cmd(wd, CONFIG, OVERRIDES), env=env, stdout=log, stderr=subprocess.STDOUT)
  try:
    wait_for(lambda: 4 in committed_steps(wd), proc, 600, 'the step-4 checkpoint')
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
  finally:
    if proc.poll() is None:
      proc.kill()
  assert proc.returncode == -signal.SIGKILL
  killed_at = max(read_losses(wd))
  assert killed_at < 8, 'the run finished before it could be killed'
  r = subprocess.run(train_cmd(wd, CONFIG, OVERRIDES), env=env, capture_output=True, text=True, timeout=900)
  assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
  resumed_from = int(r.stdout.split('resumed from step ')[1].split()[0])
  assert resumed_from >= 4
  losses = read_losses(wd)
  assert sorted(losses) == list(range(1, 9))
  # Bit-identical, every step (those before the kill and those after the resume).
  assert losses == reference['losses'], (losses, reference['losses'])
  logged = [json.loads(l)['step'] for l in open(os.path.join(wd, 'metrics.jsonl'))]
  assert logged == sorted(set(logged)), logged  # each step once, although steps after step 4 ran twice


def test_resume_with_another_config_is_refused(tmp_path, cache, reference):
  wd = str(tmp_path / 'changed')
  shutil.copytree(reference['workdir'], wd)  # a finished run (a copy: the other tests keep the original)
  env = subprocess_env(8, cache, quick_compile=True)
  before = open(os.path.join(wd, 'config.json')).read()
  r = subprocess.run(train_cmd(wd, CONFIG.replace('batch=8', 'batch=16'), OVERRIDES), env=env, capture_output=True,
                     text=True, timeout=300)
  assert r.returncode == 2, r.stderr[-3000:]
  assert len(r.stderr.strip().splitlines()) == 1, r.stderr
  assert 'batch_size: 8 → 16' in r.stderr and 'resume_with_changes' in r.stderr
  assert open(os.path.join(wd, 'config.json')).read() == before
  # The user may insist; longer runs (total_steps) never need it.
  r = subprocess.run(train_cmd(wd, CONFIG.replace('steps=8', 'steps=8'), OVERRIDES + ['--config.total_steps=8']),
                     env=env, capture_output=True, text=True, timeout=300)
  assert r.returncode == 0 and 'already at step 8' in r.stdout, r.stderr[-2000:]


@pytest.mark.parametrize('sig,code', [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=['SIGTERM', 'SIGINT'])
def test_signal_saves_and_exits(sig, code, tmp_path, cache, reference):
  """SIGTERM (preemption) and SIGINT (Ctrl-C): finish the step, commit its checkpoint, exit 143 / 130."""
  del reference  # compiled program already in the cache
  wd = str(tmp_path / 'run')
  env = subprocess_env(8, cache, quick_compile=True)
  cmd = train_cmd(wd, CONFIG.replace('steps=8', 'steps=200'), OVERRIDES[:1] + ['--config.checkpoint.every_steps=1000'])
  log_path = tmp_path / 'run.log'
  with open(log_path, 'w') as log:
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
      wait_for(lambda: len(read_losses(wd)) >= 2, proc, 600, 'two training steps')
      proc.send_signal(sig)
      proc.wait(timeout=300)
    finally:
      if proc.poll() is None:
        proc.kill()
  out = log_path.read_text()
  assert proc.returncode == code, out[-3000:]
  steps = committed_steps(wd)
  assert len(steps) == 1 and steps[0] == max(read_losses(wd)), (steps, read_losses(wd))
  assert f'{signal.Signals(sig).name}: checkpoint for step' in out and 'Traceback' not in out


def test_two_processes_match_one_process(tmp_path, cache, reference):
  sys.path.insert(0, os.path.join(REPO, 'launch'))
  import local_multiprocess  # pylint: disable=g-import-not-at-top
  multi = str(tmp_path / 'multi')
  args = train_cmd(multi, CONFIG.replace('steps=8', 'steps=3'), OVERRIDES)[4:]  # drop `python -u -m …train`
  procs = local_multiprocess.launch(2, 4, args, log_dir=str(tmp_path / 'logs'),
                                    env=subprocess_env(4, cache, quick_compile=True))
  code = local_multiprocess.wait_all(procs, timeout=900)
  logs = {i: (tmp_path / 'logs' / f'process_{i}.log').read_text() for i in range(2)}
  assert code == 0, logs[0][-3000:] + logs[1][-3000:]
  assert '2 process(es), 8 devices' in logs[0]

  a, b = reference['losses'], read_losses(multi)
  assert sorted(b) == [1, 2, 3]
  np.testing.assert_allclose([b[s] for s in (1, 2, 3)], [a[s] for s in (1, 2, 3)], rtol=2e-5, atol=0)
  # Both processes wrote their checkpoint shards; process 1's Grain state is there too.
  assert committed_steps(multi) == [2, 3]
  data_files = os.listdir(os.path.join(multi, 'checkpoints', '3', 'data'))
  assert any('process_1' in f for f in data_files), data_files
