#!/usr/bin/env python3
r"""Start N `gcd-jax train` processes on this machine, jax.distributed over 127.0.0.1, M fake CPU devices each.

  python launch/local_multiprocess.py --num-processes 2 --devices-per-process 2 -- \
      --config configs/tiny.py:data=synthetic --workdir /tmp/gcd_mp

Everything after `--` goes to `gcd-jax train` (process i gets --coordinator 127.0.0.1:PORT --num-processes N
--process-id i). Output of process i goes to WORKDIR/logs/process_i.log (and process 0's also to stdout).
Exit status: the first non-zero exit status of the processes (all are stopped if one fails).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time


def free_port() -> int:
  try:
    import portpicker  # pylint: disable=g-import-not-at-top
    return portpicker.pick_unused_port()
  except ImportError:
    import socket  # pylint: disable=g-import-not-at-top
    with socket.socket() as s:
      s.bind(('127.0.0.1', 0))
      return s.getsockname()[1]


def launch(num_processes: int, devices_per_process: int, train_args: list[str], *, log_dir: str,
           port: int | None = None, env: dict | None = None) -> list[subprocess.Popen]:
  port = port or free_port()
  os.makedirs(log_dir, exist_ok=True)
  procs = []
  for i in range(num_processes):
    e = dict(os.environ if env is None else env)
    e['JAX_PLATFORMS'] = 'cpu'
    flags = [f for f in e.get('XLA_FLAGS', '').split() if 'xla_force_host_platform_device_count' not in f]
    e['XLA_FLAGS'] = ' '.join(flags + [f'--xla_force_host_platform_device_count={devices_per_process}'])
    cmd = [sys.executable, '-m', 'gcd_jax.commands.train', *train_args,
           '--coordinator', f'127.0.0.1:{port}', '--num-processes', str(num_processes), '--process-id', str(i)]
    log = open(os.path.join(log_dir, f'process_{i}.log'), 'w')
    procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=e))
  return procs


def wait_all(procs, timeout: float | None = None) -> int:
  deadline = None if timeout is None else time.time() + timeout
  while True:
    codes = [p.poll() for p in procs]
    bad = [c for c in codes if c not in (None, 0)]
    if bad or all(c == 0 for c in codes):
      for p in procs:
        if p.poll() is None:
          p.kill()
      return bad[0] if bad else 0
    if deadline is not None and time.time() > deadline:
      for p in procs:
        p.kill()
      return 124
    time.sleep(0.5)


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--num-processes', type=int, default=2)
  parser.add_argument('--devices-per-process', type=int, default=2)
  parser.add_argument('--port', type=int, default=0)
  parser.add_argument('--log-dir', default='', help='default: /tmp/gcd_jax_local_mp')
  parser.add_argument('train_args', nargs=argparse.REMAINDER)
  args = parser.parse_args()
  train_args = [a for a in args.train_args if a != '--']
  procs = launch(args.num_processes, args.devices_per_process, train_args,
                 log_dir=args.log_dir or '/tmp/gcd_jax_local_mp', port=args.port or None)
  return wait_all(procs)


if __name__ == '__main__':
  sys.exit(main())
