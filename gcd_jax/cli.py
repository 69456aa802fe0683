"""`gcd-jax` console script: one subcommand per user job.

Each subcommand lives in `gcd_jax/commands/<name>.py` exposing `add_arguments(parser)` and `run(args)`;
they are imported lazily so that `gcd-jax --help` stays fast and a subcommand's heavy imports (torch for
conversion, grain for data) are paid only when used.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

SUBCOMMANDS = {
    'convert': 'Convert sgm / diffusers / GCD .ckpt PyTorch weights into an Orbax checkpoint.',
    'export': 'Export an Orbax checkpoint back to sgm or diffusers safetensors.',
    'data': 'Build or preview datasets (procedural, Kubric-4D, ParallelDomain-4D).',
    'train': 'Train GCD from a config (multi-host aware).',
    'demo': 'The one-command demo: the packaged demo model on held-out procedural scenes, with baselines.',
    'evaluate': 'Batch sampling evaluation with PSNR/SSIM/LPIPS/mIoU over a test split.',
    'sample': 'Generate a new camera view of your own video, image folder or image.',
}


def enable_compilation_cache() -> str:
  """JAX's persistent compilation cache, on for every command (a rerun of demo / sample / evaluate or a
  resume reuses the compiled programs instead of recompiling for minutes). Directory: $JAX_COMPILATION_CACHE_DIR
  if set, else $GCD_JAX_CACHE_DIR, else ~/.cache/gcd-jax/jax; GCD_JAX_CACHE_DIR=off disables it. Must run
  before jax is imported (JAX reads these variables when it loads)."""
  if os.environ.get('GCD_JAX_CACHE_DIR', '').lower() in ('off', '0', 'none'):
    return ''
  default = os.environ.get('GCD_JAX_CACHE_DIR') or os.path.join(os.path.expanduser('~'), '.cache', 'gcd-jax', 'jax')
  os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', default)
  os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.5')
  return os.environ['JAX_COMPILATION_CACHE_DIR']


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog='gcd-jax', description=__doc__.splitlines()[0])
  sub = parser.add_subparsers(dest='command', metavar='COMMAND')
  for name, help_text in SUBCOMMANDS.items():
    p = sub.add_parser(name, help=help_text, description=help_text)
    p.set_defaults(_module=name)
    # Arguments are added lazily in main(), only for the chosen subcommand.
  return parser


def main(argv: list[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  parser = build_parser()
  if not argv or argv[0] in ('-h', '--help') or argv[0] not in SUBCOMMANDS:
    parser.print_help() if not argv or argv[0] in ('-h', '--help') else parser.parse_args(argv)
    return 0 if not argv or argv[0] in ('-h', '--help') else 2
  name = argv[0]
  enable_compilation_cache()
  module = importlib.import_module(f'gcd_jax.commands.{name}')
  sub = argparse.ArgumentParser(prog=f'gcd-jax {name}', description=SUBCOMMANDS[name])
  module.add_arguments(sub)
  args = sub.parse_args(argv[1:])
  try:
    return int(module.run(args) or 0)
  except KeyboardInterrupt:
    print('interrupted', file=sys.stderr)
    return 130


if __name__ == '__main__':
  sys.exit(main())
