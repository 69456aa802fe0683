r"""`gcd-jax convert`: PyTorch weights → a gcd-jax model checkpoint (Orbax), streamed.

  gcd-jax convert --from sgm svd.safetensors --config gcd --out ckpt/gcd_init --init-missing
  gcd-jax convert --from gcd-ckpt gcd_kubric.ckpt --config configs/models.py:gcd --out ckpt/gcd_kubric
  gcd-jax convert --from diffusers stable-video-diffusion-img2vid/ --config svd --out ckpt/svd
  gcd-jax convert --from diffusers stabilityai/stable-video-diffusion-img2vid --config svd --out ckpt/svd   # the Hub

See gcd_jax/convert/convert.py for what is checked and gcd_jax/convert/checkpoint_io.py for the layout.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument('src', help='sgm .safetensors file, diffusers pipeline folder, or GCD .ckpt; or a Hugging Face '
                                  'Hub reference: ORG/REPO (diffusers) or ORG/REPO/FILE (sgm, gcd-ckpt)')
  parser.add_argument('--revision', default=None, help='Hub revision (branch, tag or commit) of a Hub reference')
  parser.add_argument('--from', dest='fmt', required=True, choices=('sgm', 'diffusers', 'gcd-ckpt'),
                      help='input format')
  parser.add_argument('--config', required=True,
                      help="model config: a preset ('gcd', 'svd', 'tiny', ...) or "
                           "'configs/models.py:gcd[,dtype=...]'")
  parser.add_argument('--out', required=True, help='output checkpoint folder (must not exist)')
  parser.add_argument('--init-missing', action='store_true',
                      help='initialise the GCD camera layers absent from an SVD file (aux_label_emb, '
                           'camera_embedder.proj) with PyTorch default Linear init; nothing else')
  parser.add_argument('--dtype', default='float32', choices=('float32', 'bfloat16', 'float16'),
                      help='dtype the parameters are stored in (default float32)')
  parser.add_argument('--seed', type=int, default=0, help='seed for --init-missing')
  parser.add_argument('--no-progress', action='store_true', help='no progress bar')


def run(args: argparse.Namespace) -> int:
  from gcd_jax.convert import convert as conv  # pylint: disable=g-import-not-at-top
  summary = conv.convert_checkpoint(args.fmt, args.src, args.config, args.out, init_missing=args.init_missing,
                                    dtype=args.dtype, seed=args.seed, progress=not args.no_progress,
                                    config_spec=args.config, revision=args.revision)
  print(summary.text())
  return 0
