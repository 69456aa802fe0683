"""Multi-host training on one machine: 2 processes × 2 fake CPU devices (jax.distributed on 127.0.0.1, a free
port from portpicker, launched by launch/local_multiprocess.py) log the same losses as 1 process × 4 devices.

Each host reads its own data shard (examples s, s+2, ...) and feeds it as its slice of the global batch;
randomness is keyed by the global example index, so both layouts train on the same videos with the same
noise. The two programs differ only in how the 4-way collectives are carried out (in-process vs gloo across
processes), hence a tight tolerance rather than bit equality.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np

from tests.fixtures_train import REPO, committed_steps, read_losses, subprocess_env, train_cmd

CONFIG = 'configs/tiny.py:data=synthetic,steps=3,batch=4,frames=3'
OVERRIDES = ['--config.features=precomputed', '--config.checkpoint.every_steps=2']

sys.path.insert(0, os.path.join(REPO, 'launch'))


def test_two_processes_match_one_process(tmp_path):
  import local_multiprocess  # pylint: disable=g-import-not-at-top
  cache = str(tmp_path / 'cache')
  single = str(tmp_path / 'single')
  r = subprocess.run(train_cmd(single, CONFIG, OVERRIDES), env=subprocess_env(4, cache), capture_output=True,
                     text=True, timeout=900)
  assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]

  multi = str(tmp_path / 'multi')
  args = train_cmd(multi, CONFIG, OVERRIDES)[4:]  # drop `python -u -m gcd_jax.commands.train`
  procs = local_multiprocess.launch(2, 2, args, log_dir=str(tmp_path / 'logs'), env=subprocess_env(2, cache))
  code = local_multiprocess.wait_all(procs, timeout=900)
  logs = {i: (tmp_path / 'logs' / f'process_{i}.log').read_text() for i in range(2)}
  assert code == 0, logs[0][-3000:] + logs[1][-3000:]
  assert '2 process(es), 4 devices' in logs[0]

  a, b = read_losses(single), read_losses(multi)
  assert sorted(a) == sorted(b) == [1, 2, 3]
  np.testing.assert_allclose([b[s] for s in (1, 2, 3)], [a[s] for s in (1, 2, 3)], rtol=2e-5, atol=0)
  # Both processes wrote their checkpoint shards; process 1's Grain state is there too.
  assert committed_steps(multi) == [2, 3]
  data_files = os.listdir(os.path.join(multi, 'checkpoints', '3', 'data'))
  assert any('process_1' in f for f in data_files), data_files
