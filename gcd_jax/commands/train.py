r"""`gcd-jax train`: train GCD from a config file (big_vision-style presets + ml_collections overrides).

  gcd-jax train --config configs/tiny.py --workdir /tmp/gcd_tiny
  gcd-jax train --config configs/gcd.py:data=kubric,traj=gradual,az=90 --workdir gs://.../run1 \
      --config.init_checkpoint=/ckpt/svd --config.batch_size=64 --config.optim.lr=1e-5
  # multi-host without auto-detection (TPU / SLURM detect themselves):
  gcd-jax train --config ... --workdir W --coordinator 10.0.0.1:1234 --num-processes 4 --process-id $I

Re-running with the same --workdir resumes from its latest checkpoint. SIGTERM saves and exits (code 143).
"""

from __future__ import annotations

import argparse
import json
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument('--config', required=True, help='configs/FILE.py[:ARG], e.g. configs/gcd.py:data=kubric')
  parser.add_argument('--workdir', required=True, help='checkpoints, TensorBoard logs, previews')
  parser.add_argument('--coordinator', default='', help='HOST:PORT of process 0 (multi-host without auto-detect)')
  parser.add_argument('--num-processes', type=int, default=0)
  parser.add_argument('--process-id', type=int, default=-1)
  parser.add_argument('--export', default='', help='after training, write the model in `gcd-jax convert` format here')
  parser.add_argument('overrides', nargs=argparse.REMAINDER,
                      help='--config.FIELD=VALUE overrides (after the other flags)')


def parse(argv):
  """argparse with --config.x=y overrides anywhere (they are unknown to argparse)."""
  parser = argparse.ArgumentParser(prog='gcd-jax train')
  add_arguments(parser)
  args, rest = parser.parse_known_args(argv)
  args.overrides = list(args.overrides or []) + rest
  return args


def run(args) -> int:
  from gcd_jax.train import config_flags, distributed  # pylint: disable=g-import-not-at-top
  overrides = [o for o in (args.overrides or []) if o != '--']
  distributed.initialize(args.coordinator, args.num_processes, args.process_id)
  config = config_flags.apply_overrides(config_flags.load_config(args.config), overrides)
  from gcd_jax.train import trainer  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  result = trainer.train(config, args.workdir)
  if args.export and result['status'] == 'done':
    trainer.export_model(config, result, args.export)
  if jax.process_index() == 0:
    print(json.dumps(dict(status=result['status'], step=result['step'], **result['metrics'])), flush=True)
  return 143 if result['status'] == 'preempted' else 0


def main(argv=None) -> int:
  return run(parse(sys.argv[1:] if argv is None else argv))


if __name__ == '__main__':
  sys.exit(main())
