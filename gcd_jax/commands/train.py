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
  parser.add_argument('--export', default='',
                      help='after training, write the model in `gcd-jax convert` format here (EMA weights when the '
                           'run keeps them). `sample`, `evaluate` and `export` also take the workdir itself.')
  # --config.FIELD=VALUE (or --config.FIELD VALUE) overrides, ml_collections style, anywhere on the line.
  parser.set_defaults(overrides=[])
  # `--config.x=y` flags are unknown to argparse: collect them instead of failing (the CLI calls parse_args).
  _parse_known = parser.parse_known_args

  def parse_args(args=None, namespace=None):
    ns, rest = _parse_known(args, namespace)
    bad = [r for r in rest if not r.lstrip('-').startswith('config.') and r != '--']
    if bad and not all(_is_override_value(rest, r) for r in bad):
      parser.error(f'unrecognized arguments: {" ".join(bad)}')
    ns.overrides = list(ns.overrides or []) + rest
    return ns

  parser.parse_args = parse_args


def _is_override_value(rest, item) -> bool:
  """`--config.x VALUE` (space-separated form): VALUE follows an override without '='."""
  i = rest.index(item)
  return i > 0 and rest[i - 1].lstrip('-').startswith('config.') and '=' not in rest[i - 1]


def parse(argv):
  parser = argparse.ArgumentParser(prog='gcd-jax train')
  add_arguments(parser)
  return parser.parse_args(argv)


def run(args) -> int:
  from gcd_jax.train import config_flags, distributed  # pylint: disable=g-import-not-at-top
  overrides = [o for o in (args.overrides or []) if o != '--']
  distributed.initialize(args.coordinator, args.num_processes, args.process_id)
  config = config_flags.apply_overrides(config_flags.load_config(args.config), overrides)
  from gcd_jax.train import trainer  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  result = trainer.train(config, args.workdir)
  if args.export and result['status'] == 'done' and jax.process_index() == 0:
    out = trainer.export_model(config, args.workdir, result['step'], args.export)
    print(f'[train] exported step {result["step"]} to {out}', flush=True)
  if jax.process_index() == 0:
    print(json.dumps(dict(status=result['status'], step=result['step'], **result['metrics'])), flush=True)
  return 143 if result['status'] == 'preempted' else 0


def main(argv=None) -> int:
  return run(parse(sys.argv[1:] if argv is None else argv))


if __name__ == '__main__':
  sys.exit(main())
