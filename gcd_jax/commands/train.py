r"""`gcd-jax train`: train GCD from a config file (big_vision-style presets + ml_collections overrides).

  gcd-jax train --config configs/tiny.py --workdir /tmp/gcd_tiny
  gcd-jax train --config configs/gcd.py:data=kubric,traj=gradual,az=90 --workdir gs://.../run1 \
      --config.init_checkpoint=/ckpt/svd --config.batch_size=64 --config.optim.lr=1e-5
  # multi-host without auto-detection (TPU / SLURM detect themselves):
  gcd-jax train --config ... --workdir W --coordinator 10.0.0.1:1234 --num-processes 4 --process-id $I

Re-running with the same --workdir resumes from its latest checkpoint; resuming with a different config is
refused (the differing fields are listed) unless --config.resume_with_changes=true. SIGTERM saves and exits
(code 143); Ctrl-C (SIGINT) saves and exits (code 130), a second Ctrl-C aborts at once.
"""

from __future__ import annotations

import argparse
import json
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument('--config', required=True,
                      help='config file[:ARG] (relative to here, else the packaged configs/), e.g. configs/tiny.py, '
                           'configs/gcd.py:data=kubric; then any --config.FIELD=VALUE overrides')
  parser.add_argument('--workdir', required=True, help='checkpoints, logs, previews; rerunning resumes it')
  parser.add_argument('--coordinator', default='', help='HOST:PORT of process 0 (multi-host without auto-detect)')
  parser.add_argument('--num-processes', type=int, default=0, help='processes in a multi-host job (0: detect)')
  parser.add_argument('--process-id', type=int, default=-1, help='this process (-1: detect)')
  parser.add_argument('--export', default='',
                      help='after training, write the model in `gcd-jax convert` format here (EMA weights when the '
                           'run keeps them). `sample`, `evaluate` and `export` also take the workdir itself.')
  parser.add_argument('--no-progress', action='store_true',
                      help='accepted by every long command; train already logs plain lines (no bars)')


def run(args) -> int:
  from gcd_jax import config_flags  # pylint: disable=g-import-not-at-top
  config = config_flags.load_config(args.config, args.overrides)  # before any import of jax or file write
  from gcd_jax.train import distributed  # pylint: disable=g-import-not-at-top
  distributed.initialize(args.coordinator, args.num_processes, args.process_id)
  from gcd_jax.train import trainer  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  result = trainer.train(config, args.workdir)
  if args.export and result['status'] == 'done' and jax.process_index() == 0:
    out = trainer.export_model(config, args.workdir, result['step'], args.export)
    print(f'[train] exported step {result["step"]} to {out}', flush=True)
  if jax.process_index() == 0:
    print(json.dumps(dict(status=result['status'], step=result['step'], **result['metrics'])), flush=True)
  return exit_code(result)


def exit_code(result: dict) -> int:
  """143 after SIGTERM (128 + 15, what schedulers expect of a preempted job), 130 after Ctrl-C, else 0."""
  return {'preempted': 143, 'interrupted': 130}.get(result['status'], 0)


def main(argv=None) -> int:
  from gcd_jax import cli  # pylint: disable=g-import-not-at-top
  return cli.main(['train'] + list(sys.argv[1:] if argv is None else argv))


if __name__ == '__main__':
  sys.exit(main())
