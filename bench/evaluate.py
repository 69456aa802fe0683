r"""Benchmark of `gcd-jax evaluate`: videos evaluated per second, end to end.

  python bench/evaluate.py                      # tiny model, CPU: 4 procedural scenes, 14 frames, 25 steps
  python bench/evaluate.py --model gcd --height 256 --width 384 --render-height 280 --render-width 420 \
      --scenes 8 --batch-size 8                 # full size on an accelerator (random weights)

Measures the whole job (rendering input/GT/reproject, conditioning, guided sampling, decoding, metrics,
galleries, JSON) on procedural scenes with a random-weight checkpoint: a warm-up run (compiles) into one
folder, then a timed run into another. A "video" is one (scene, sample) pair. Prints one JSON line and a
one-line summary.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--model', default='tiny', help='model preset (configs/models.py)')
  p.add_argument('--scenes', type=int, default=4)
  p.add_argument('--num-samples', type=int, default=2)
  p.add_argument('--steps', type=int, default=25)
  p.add_argument('--frames', type=int, default=14)
  p.add_argument('--height', type=int, default=32)
  p.add_argument('--width', type=int, default=48)
  p.add_argument('--render-height', type=int, default=35)
  p.add_argument('--render-width', type=int, default=52)
  p.add_argument('--scene-preset', default='tiny,num_frames=30,height=48,width=72',
                 help='gcd_jax.geometry.procedural preset of the generated scenes')
  p.add_argument('--batch-size', type=int, default=2)
  p.add_argument('--workdir', default='', help='where scenes/TFDS/checkpoint/outputs go (default: a temp dir)')
  args = p.parse_args(argv)

  import jax  # pylint: disable=g-import-not-at-top
  from gcd_jax.models import presets as models  # pylint: disable=g-import-not-at-top
  from data_pipelines import tfds_builders  # pylint: disable=g-import-not-at-top
  from gcd_jax import cli  # pylint: disable=g-import-not-at-top
  from tests import fixtures_models  # pylint: disable=g-import-not-at-top  (random weights: a benchmark needs no trained model)

  work = args.workdir or tempfile.mkdtemp(prefix='bench_eval_')
  scenes_root, data_dir = os.path.join(work, 'scenes'), os.path.join(work, 'tfds')
  t0 = time.perf_counter()
  # Procedural scenes at Kubric test indices, read through the kubric_4d builder (its test split).
  tfds_builders.generate_scenes(scenes_root, range(2900, 2900 + args.scenes), preset=args.scene_preset, seed=0)
  tfds_builders.build('kubric_4d', data_dir=data_dir, config='full', manual_dir=scenes_root)
  ckpt = os.path.join(work, f'ckpt_{args.model}')
  if not os.path.exists(ckpt):
    fixtures_models.write_random_checkpoint(ckpt, models.get_config(args.model), seed=0)
  setup_s = time.perf_counter() - t0
  data = (f'tiny,dataset=kubric_4d,builder_config=full,data_dir={data_dir},height={args.height},'
          f'width={args.width},render_height={args.render_height},render_width={args.render_width},'
          f'num_frames={args.frames}')
  common = ['evaluate', '--config', args.model, '--checkpoint', ckpt, '--data', data, '--split', 'test',
            '--num-samples', str(args.num_samples), '--steps', str(args.steps), '--batch-size',
            str(args.batch_size), '--decoding-t', str(args.frames), '--no-progress']
  runs = {}
  for name in ('warmup', 'timed'):
    out = os.path.join(work, f'out_{name}_{time.time_ns()}')
    t = time.perf_counter()
    rc = cli.main(common + ['--out', out])
    if rc:
      print(f'bench/evaluate.py: evaluate failed (rc {rc})', file=sys.stderr)
      return rc
    with open(os.path.join(out, 'progress_host0.json')) as f:
      prog = json.load(f)
    runs[name] = dict(prog, wall=time.perf_counter() - t)
  timed = runs['timed']
  videos = args.scenes * args.num_samples
  result = {
      'bench': 'evaluate', 'device': str(jax.devices()[0].platform), 'num_devices': len(jax.local_devices()),
      'model': args.model, 'scenes': args.scenes, 'samples_per_scene': args.num_samples, 'steps': args.steps,
      'frames': args.frames, 'height': args.height, 'width': args.width, 'batch_size': args.batch_size,
      'videos': videos, 'seconds': round(timed['seconds'], 3),
      'videos_per_s': round(videos / timed['seconds'], 4),
      'scenes_per_s': round(args.scenes / timed['seconds'], 4),
      'seconds_inputs': round(timed['seconds_inputs'], 3),
      'seconds_sampling': round(timed['seconds_sampling'], 3),
      'seconds_scoring': round(timed['seconds_scoring'], 3),
      'warmup_seconds_incl_compile': round(runs['warmup']['wall'], 3), 'setup_seconds': round(setup_s, 3),
  }
  print(json.dumps(result))
  print(f'evaluate ({args.model}, {args.frames}×{args.height}×{args.width}, {args.steps} steps, '
        f'{args.num_samples} samples): {result["videos_per_s"]:.3f} videos/s ({videos} videos in '
        f'{timed["seconds"]:.1f}s: inputs {timed["seconds_inputs"]:.1f}s, sampling '
        f'{timed["seconds_sampling"]:.1f}s, metrics+galleries {timed["seconds_scoring"]:.1f}s)')
  return 0


if __name__ == '__main__':
  sys.exit(main())
