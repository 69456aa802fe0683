r"""`gcd-jax evaluate`: batch sampling evaluation over a test split (see gcd_jax/evaluate/evaluate.py).

  gcd-jax evaluate --config configs/models.py:gcd --checkpoint ckpt/gcd_kubric --data kubric \
      --data-dir ~/tensorflow_datasets --split test --list eval/list/kubric_test20.txt \
      --controls eval/list/kubric_valtest_controls_gradual.json --num-samples 2 --steps 25 --out runs/eval

  # no download: the procedural dataset, built-in seeded controls, the tiny model
  gcd-jax evaluate --config tiny --checkpoint ckpt/tiny --data tiny --data-dir /tmp/tfds \
      --num-samples 2 --steps 3 --out runs/eval_tiny
  # a training workdir: its latest step, EMA weights, its own data and trajectory config
  gcd-jax evaluate --checkpoint W --data-dir D --out runs/eval_W
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument('--config', default='',
                      help="model config: a preset ('gcd', 'tiny', 'configs/models.py:gcd,dtype=bfloat16') or a "
                           "training config file with .model/.data ('configs/gcd.py:data=kubric'); default: the "
                           "configs stored with the checkpoint")
  parser.add_argument('--checkpoint', required=True,
                      help='gcd-jax model checkpoint folder (gcd-jax convert / train --export) or a training workdir')
  from gcd_jax.train.workdir import add_step_arguments  # pylint: disable=g-import-not-at-top
  add_step_arguments(parser, 'evaluate')
  parser.add_argument('--data', default='',
                      help="data preset of data_pipelines.input_pipeline.data_config ('kubric', 'pardom', "
                           "'procedural', 'tiny', with ',key=value' overrides); default: the training config's "
                           ".data, else 'procedural'")
  parser.add_argument('--data-dir', default='', help='TFDS data dir (overrides the data config)')
  parser.add_argument('--trajectory', default='',
                      help="trajectory preset of the checkpoint's training data ('kubric_gradual_max90', "
                           "'kubric_direct_max180', 'pardom_gradual'); default: the data config's")
  parser.add_argument('--split', default='test', help='dataset split to evaluate')
  parser.add_argument('--list', dest='list_file', default='',
                      help='scene list (eval/list/*.txt: one path or name per line, # comments); default: '
                           'every scene of the split')
  parser.add_argument('--controls', dest='controls_file', default='',
                      help='control JSON (eval/list/*_controls*.json); default: seeded generated controls')
  parser.add_argument('--control-idx', type=int, default=0, help='which sample_XX entry of the controls')
  from gcd_jax.pipeline import add_sampler_arguments  # pylint: disable=g-import-not-at-top
  add_sampler_arguments(parser, samples_help='samples per scene (metrics average over them)')
  parser.add_argument('--seed', type=int, default=0, help='noise seed (per scene and sample, reproducible)')
  parser.add_argument('--batch-size', type=int, default=0,
                      help='videos per sampler call (default: number of local devices); sharded over them')
  parser.add_argument('--lpips', choices=('none', 'vgg', 'alex'), default='none',
                      help='also compute LPIPS (needs the torchvision trunk file and lpips heads, see '
                           'gcd_jax/evaluate/lpips.py)')
  parser.add_argument('--lpips-backbone', default='', help='torchvision vgg16/alexnet weights file')
  parser.add_argument('--lpips-heads', default='', help='lpips weights/v0.1/{vgg,alex}.pth')
  parser.add_argument('--semantic-palette', default='',
                      help='ParallelDomain ontology JSON: compute mIoU of semantic outputs (nearest palette colour)')
  parser.add_argument('--max-scenes', type=int, default=-1,
                      help='stop after this many newly evaluated scenes (rerun to resume)')
  parser.add_argument('--out', required=True, help='output folder (created; a rerun resumes)')
  parser.add_argument('--no-progress', action='store_true', help='no progress bar')


def run(args: argparse.Namespace) -> int:
  from gcd_jax.evaluate import evaluate as ev  # pylint: disable=g-import-not-at-top
  from gcd_jax.train import workdir  # pylint: disable=g-import-not-at-top
  if args.overrides and not args.config:
    raise ev.EvaluationError('--config.FIELD overrides need --config (the model or training config they modify)')
  args.checkpoint = workdir.resolve_model(args.checkpoint, step=args.step, weights=args.weights)
  print(ev.evaluate(ev.EvalRequest.from_options(args)))
  return 0
