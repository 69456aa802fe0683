"""The trainer as a process: preemption, resume and multi-host, through `gcd-jax train` in subprocesses (own
XLA_FLAGS each), all compared with ONE uninterrupted reference run (1 process × 8 fake CPU devices):

* resume equivalence: a run SIGKILLed after step k's checkpoint is committed, then restarted on the same
  workdir, logs exactly (bit-identical on CPU) the losses of an uninterrupted run — params, Adam state, step,
  RNG key and the Grain iterator position all come back;
* SIGTERM (preemption): the trainer saves the step it is at, waits for the commit and exits 143; the resume
  chain starts with it (SIGTERM, resume, SIGKILL, resume). SIGINT (Ctrl-C) takes the same path with exit code
  130 (its handler and exit code are checked in process, test_sigint_is_ctrl_c);
* metrics.jsonl holds each step once after a resume;
* resuming a finished workdir with a different config is refused (one line, exit 2, nothing rewritten; in
  process, through the console script's `cli.main`: neither of its runs compiles);
* multi-host on one machine: 2 processes × 4 fake CPU devices (jax.distributed on 127.0.0.1, a free port,
  launched by launch/local_multiprocess.py) log the losses of the reference run. Each host reads its own data
  shard (examples s, s+2, ...) and feeds it as its slice of the global batch; randomness is keyed by the
  global example index, so both layouts train on the same videos with the same noise. The two programs differ
  only in how the 8-way collectives are carried out (in-process vs gloo across processes), hence a tight
  tolerance rather than bit equality.

The tiny preset with a one-level, one-ResBlock U-Net (`SMALL_U_NET` in tests/fixtures_train.py: what is tested
here is the trainer, not the network; the program compiles in half the time and loads from the cache in half the
time), real GCD loss;
the frozen CLIP/VAE features are precomputed (synthetic) here to keep compile time down — the in-step path is
covered by test_train_step.py. All runs share a persistent XLA compilation cache, and LLVM compiles at -O0 (a
few steps each: compiling is most of their time).
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

from tests.fixtures_train import (REPO, SMALL_U_NET, committed_steps, override_flags, read_losses, subprocess_env,
                                  train_args, train_cmd, wait_for)

CONFIG = 'configs/tiny.py:data=synthetic,steps=8,batch=8,frames=3'
OVERRIDES = ['--config.features=precomputed', '--config.checkpoint.every_steps=2',
             '--config.checkpoint.max_to_keep=0', *override_flags(SMALL_U_NET)]


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


def _run_until(cmd, env, log_path, pred, what, sig):
  """Starts `cmd`, waits for `pred()`, sends `sig`; → (exit code, the run's output)."""
  with open(log_path, 'w') as log:
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
      wait_for(pred, proc, 600, what)
      proc.send_signal(sig)
      proc.wait(timeout=300)
    finally:
      if proc.poll() is None:
        proc.kill()
  return proc.returncode, open(log_path).read()


def test_preempt_kill_resume_gives_identical_losses(tmp_path, cache, reference):
  """SIGTERM (a preempted job), resume, SIGKILL after a committed checkpoint (a lost machine), resume to the
  end: every step's loss is bit-identical to the uninterrupted run's."""
  wd = str(tmp_path / 'interrupted')
  env = subprocess_env(8, cache, quick_compile=True)
  cmd = train_cmd(wd, CONFIG, OVERRIDES)

  # SIGTERM: the step under way finishes, its checkpoint is committed, exit 143.
  code, out = _run_until(cmd, env, tmp_path / 'sigterm.log', lambda: len(read_losses(wd)) >= 2, 'two training steps',
                         signal.SIGTERM)
  assert code == 143, out[-3000:]
  saved = max(read_losses(wd))
  assert saved < 8, 'the run finished before SIGTERM arrived'
  assert committed_steps(wd)[-1] == saved, (committed_steps(wd), saved)
  assert f'SIGTERM: checkpoint for step {saved} committed' in out and 'Traceback' not in out

  # Resume, then SIGKILL once a later checkpoint is committed: nothing is saved at the kill.
  code, out = _run_until(cmd, env, tmp_path / 'sigkill.log', lambda: committed_steps(wd)[-1] > saved,
                         'a checkpoint after the resume', signal.SIGKILL)
  assert code == -signal.SIGKILL, out[-3000:]
  assert f'resumed from step {saved}' in out, out[-3000:]
  killed_at = max(read_losses(wd))
  assert killed_at < 8, 'the run finished before it could be killed'

  r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
  assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
  resumed_from = int(r.stdout.split('resumed from step ')[1].split()[0])
  assert saved < resumed_from <= killed_at
  losses = read_losses(wd)
  assert sorted(losses) == list(range(1, 9))
  # Bit-identical, every step (those before each interruption and those after each resume).
  assert losses == reference['losses'], (losses, reference['losses'])
  logged = [json.loads(l)['step'] for l in open(os.path.join(wd, 'metrics.jsonl'))]
  assert logged == sorted(set(logged)), logged  # each step once, although the steps after the kill ran twice


def test_resume_with_another_config_is_refused(tmp_path, reference, capsys, monkeypatch):
  """In process (`gcd_jax.cli.main`, the console script's code path): neither run gets as far as a compile."""
  from gcd_jax import cli  # pylint: disable=g-import-not-at-top
  wd = str(tmp_path / 'changed')
  shutil.copytree(reference['workdir'], wd)  # a finished run (a copy: the other tests keep the original)
  monkeypatch.chdir(REPO)
  before = open(os.path.join(wd, 'config.json')).read()
  assert cli.main(['train', *train_args(wd, CONFIG.replace('batch=8', 'batch=16'), OVERRIDES)]) == 2
  err = capsys.readouterr().err
  assert len(err.strip().splitlines()) == 1, err
  assert 'batch_size: 8 → 16' in err and 'resume_with_changes' in err
  assert open(os.path.join(wd, 'config.json')).read() == before
  # The user may insist; longer runs (total_steps) never need it.
  assert cli.main(['train', *train_args(wd, CONFIG, [*OVERRIDES, '--config.total_steps=8'])]) == 0
  assert 'already at step 8' in capsys.readouterr().out


def test_sigint_is_ctrl_c():
  """SIGINT takes SIGTERM's path (finish the step, save, exit) with Ctrl-C's exit code 130; a second Ctrl-C
  aborts at once. In process: the end-to-end path is the SIGTERM run above."""
  from gcd_jax.commands import train as train_command  # pylint: disable=g-import-not-at-top
  from gcd_jax.train import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  before = signal.getsignal(signal.SIGINT)
  preemption = ckpt_lib.Preemption().install()
  try:
    os.kill(os.getpid(), signal.SIGINT)
    assert preemption.requested and preemption.signal_name == 'SIGINT' and preemption.status == 'interrupted'
    with pytest.raises(KeyboardInterrupt):
      os.kill(os.getpid(), signal.SIGINT)
  finally:
    preemption.uninstall()
  assert signal.getsignal(signal.SIGINT) is before
  assert train_command.exit_code(dict(status='interrupted')) == 130
  assert train_command.exit_code(dict(status='preempted')) == 143
  assert train_command.exit_code(dict(status='done')) == 0


def test_two_processes_match_one_process(tmp_path, cache, reference):
  sys.path.insert(0, os.path.join(REPO, 'launch'))
  import local_multiprocess  # pylint: disable=g-import-not-at-top
  multi = str(tmp_path / 'multi')
  args = train_args(multi, CONFIG.replace('steps=8', 'steps=3'), OVERRIDES)
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
