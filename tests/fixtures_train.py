"""Shared helpers for the trainer tests: tiny configs, subprocess runs of `gcd-jax train`, metrics logs."""

from __future__ import annotations

import json
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# The in-step tiny train program (CLIP + VAE in the step, 8 videos × 3 frames over 8 devices, lr 1e-3, EMA
# 0.75): test_train_step.py compiles it in process and test_workdir.py's `gcd-jax train` subprocess runs the
# same program, so whichever runs second loads it from the suite's persistent compilation cache (~60 s less
# than a compile). Keep the two in step: any difference in these values is a different program.
INSTEP_ARG = 'data=synthetic,batch=8,frames=3'
# The trainer tests' U-Net: the tiny preset with one level and one ResBlock. They test the trainer (sharding,
# checkpoints, EMA, resume, the workdir commands), not the network, whose parity tests/test_unet.py checks at
# two levels. Its programs compile in about half the time of the two-level tiny U-Net's.
SMALL_U_NET = {'model.unet.channel_mult': (1,), 'model.unet.num_res_blocks': 1}
INSTEP_OVERRIDES = {'optim.lr': 1e-3, 'optim.ema_decay': 0.75, **SMALL_U_NET}
INSTEP_DEVICES = 8


def override_flags(overrides: dict) -> list[str]:
  """{'a.b': v} → ['--config.a.b=v'], as a user types them (tuples as '(1,)')."""
  return [f'--config.{k}={v}' for k, v in overrides.items()]


def tiny_config(arg: str = INSTEP_ARG, **overrides):
  from configs import tiny  # pylint: disable=g-import-not-at-top
  cfg = tiny.get_config(arg)
  for k, v in overrides.items():
    node = cfg
    *parents, leaf = k.split('.')
    for p in parents:
      node = node[p]
    node[leaf] = v
  return cfg


def subprocess_env(devices: int, cache_dir: str, quick_compile: bool = False) -> dict:
  """Subprocesses set their own XLA_FLAGS (device count) and share a persistent compilation cache so that
  the second and later runs of the same program skip XLA compilation.

  quick_compile: LLVM at -O0 (`--xla_backend_optimization_level=0`) for runs of a few tiny train steps, where
  compiling is nearly all of the time: the tiny train step compiles in 55 s instead of 75 s and then runs
  3× slower (0.3 s a step), a net gain below ~60 steps. Commands that run a full sampler keep -O3."""
  env = dict(os.environ)
  flags = [f for f in env.get('XLA_FLAGS', '').split()
           if 'xla_force_host_platform_device_count' not in f and 'xla_backend_optimization_level' not in f]
  flags.append(f'--xla_force_host_platform_device_count={devices}')
  if quick_compile:
    flags.append('--xla_backend_optimization_level=0')
  env['XLA_FLAGS'] = ' '.join(flags)
  env['JAX_PLATFORMS'] = 'cpu'
  env['JAX_COMPILATION_CACHE_DIR'] = os.environ.get('JAX_COMPILATION_CACHE_DIR', cache_dir)  # the suite's (conftest)
  env['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0'
  env['JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES'] = '0'
  env['PYTHONPATH'] = REPO + os.pathsep + env.get('PYTHONPATH', '')
  return env


def train_args(workdir: str, config: str, overrides=()) -> list[str]:
  """The arguments of `gcd-jax train` (for `cli.main(['train', *args])` in process, or after the module)."""
  return ['--config', os.path.join(REPO, config), '--workdir', workdir, *overrides]


def train_cmd(workdir: str, config: str, overrides=()) -> list[str]:
  return [sys.executable, '-u', '-m', 'gcd_jax.commands.train', *train_args(workdir, config, overrides)]


def read_losses(workdir: str) -> dict[int, float]:
  """{step: loss} from W/metrics.jsonl (the LAST line per step wins: a resumed run re-logs nothing older)."""
  out = {}
  path = os.path.join(workdir, 'metrics.jsonl')
  if not os.path.exists(path):
    return out
  with open(path) as f:
    for line in f:
      line = line.strip()
      if line:
        d = json.loads(line)
        out[int(d['step'])] = d['loss']
  return out


def committed_steps(workdir: str) -> list[int]:
  """Checkpoint steps Orbax has committed (finalised folders named by the step number)."""
  d = os.path.join(workdir, 'checkpoints')
  if not os.path.isdir(d):
    return []
  return sorted(int(n) for n in os.listdir(d) if n.isdigit())


def wait_for(pred, proc, timeout: float, what: str):
  t0 = time.time()
  while time.time() - t0 < timeout:
    if pred():
      return
    if proc.poll() is not None:
      raise AssertionError(f'process exited ({proc.returncode}) before {what}')
    time.sleep(0.2)
  raise AssertionError(f'timed out waiting for {what}')
