r"""`gcd-jax export`: a gcd-jax model checkpoint → PyTorch safetensors (sgm file or diffusers folder).

  gcd-jax export --to sgm ckpt/gcd_kubric --out gcd_kubric.safetensors
  gcd-jax export --to diffusers ckpt/svd --out svd-diffusers/

sgm → JAX → sgm is bit-exact for every tensor the model holds (gcd_jax/convert/export.py).
"""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument('ckpt', help='checkpoint folder written by `gcd-jax convert` / `train --export`, or a '
                                   'training workdir (see --step, --weights)')
  from gcd_jax.train.workdir import add_step_arguments  # pylint: disable=g-import-not-at-top
  add_step_arguments(parser, 'export')
  parser.add_argument('--to', required=True, choices=('sgm', 'diffusers'), help='output format')
  parser.add_argument('--out', required=True,
                      help='output: a .safetensors file (sgm) or a folder (diffusers); must not exist')
  parser.add_argument('--dtype', default=None, choices=('float32', 'bfloat16', 'float16'),
                      help='dtype of the written tensors (default: the checkpoint\'s)')
  parser.add_argument('--no-progress', action='store_true', help='no progress bar')


def run(args: argparse.Namespace) -> int:
  from gcd_jax.convert import export  # pylint: disable=g-import-not-at-top
  from gcd_jax.convert.checkpoint_io import CheckpointError  # pylint: disable=g-import-not-at-top
  from gcd_jax.convert.torch_layout import WeightLoadError  # pylint: disable=g-import-not-at-top
  from gcd_jax.train import workdir  # pylint: disable=g-import-not-at-top
  try:
    args.ckpt = workdir.resolve_model(args.ckpt, step=args.step, weights=args.weights)
    info = export.export_checkpoint(args.ckpt, args.to, args.out, dtype=args.dtype,
                                    progress=not args.no_progress)
  except (CheckpointError, WeightLoadError, FileExistsError, FileNotFoundError, ValueError) as e:
    print(f'gcd-jax export: error: {e}', file=sys.stderr)
    return 1
  print(f'exported {info["tensors"]} tensors ({info["bytes"] / 1e9:.3f} GB, {info["dtype"]}) to '
        f'{info["out"]}')
  return 0
