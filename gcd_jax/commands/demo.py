r"""`gcd-jax demo`: the whole GCD pipeline on this CPU in a few minutes, no download.

  gcd-jax demo                       # workdir ./gcd_demo
  gcd-jax demo --workdir /tmp/demo --steps 40

1. builds the tiny procedural 4D dataset (TFDS `procedural_4d/tiny`, 6 scenes at 64×96) under
   WORKDIR/tensorflow_datasets if it is absent;
2. trains the tiny GCD model (configs/tiny.py: 3 frames at 32×48, camera-conditioned) for --steps steps on
   all local devices, checkpointing under WORKDIR/train/checkpoints (re-running resumes);
3. samples a held-out (test-split) scene with the jitted EDM sampler and guidance;
4. writes WORKDIR/demo.mp4 (input | generated | ground truth) and WORKDIR/demo_metrics.json, and prints a
   metrics line (PSNR / SSIM of the sample vs the ground-truth target view; a few steps of training on 5
   scenes gives a blurry but camera-consistent sample, not a good one).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument('--workdir', default='gcd_demo')
  parser.add_argument('--steps', type=int, default=30)
  parser.add_argument('--batch-size', type=int, default=8)
  parser.add_argument('--sample-steps', type=int, default=10, help='EDM sampling steps')
  parser.add_argument('--seed', type=int, default=0)


def run(args) -> int:
  t_start = time.perf_counter()
  os.environ.setdefault('JAX_PLATFORMS', 'cpu')
  workdir = os.path.abspath(args.workdir)
  os.makedirs(workdir, exist_ok=True)
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()  # Grain reads absl flags
  from data_pipelines import input_pipeline, tfds_builders  # pylint: disable=g-import-not-at-top
  from gcd_jax.train import config_flags, sharding as sh, trainer  # pylint: disable=g-import-not-at-top

  # 1. data ---------------------------------------------------------------------------------------------
  data_dir = os.path.join(workdir, 'tensorflow_datasets')
  t0 = time.perf_counter()
  builder = tfds_builders.get_builder('procedural_4d', data_dir=data_dir, config='tiny')
  if not builder.is_prepared():
    print(f'[demo] building the tiny procedural dataset in {data_dir} ...', flush=True)
    tfds_builders.build('procedural_4d', data_dir=data_dir, config='tiny')
  t_data = time.perf_counter() - t0
  print(f'[demo] dataset ready ({t_data:.0f}s)', flush=True)

  # 2. train --------------------------------------------------------------------------------------------
  repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  cfg = config_flags.load_config(os.path.join(repo, 'configs', 'tiny.py') + f':steps={args.steps},batch={args.batch_size}')
  cfg.data.data_dir = data_dir
  cfg.seed = args.seed
  n = jax.device_count()
  cfg.batch_size = max(args.batch_size // n, 1) * n
  t0 = time.perf_counter()
  result = trainer.train(cfg, os.path.join(workdir, 'train'))
  t_train = time.perf_counter() - t0

  # 3. sample a held-out scene --------------------------------------------------------------------------
  t0 = time.perf_counter()
  test = cfg.data.copy_and_resolve_references()
  test.split, test.batch_size, test.shuffle, test.shard_index, test.shard_count = 'test', 1, False, 0, 1
  example = next(input_pipeline.make_iterator(test))
  mesh = sh.make_mesh((1, 1, 1), devices=jax.devices()[:1])
  cfg.diffusion.sampler.num_steps = args.sample_steps
  layouts = result['layouts']
  params = jax.device_put(result['state']['params'], jax.devices()[0])
  frozen = jax.device_put(result['frozen'], jax.devices()[0])
  batch = {k: np.asarray(v) for k, v in example.items() if k in (
      'jpg', 'cond_frames_without_noise', 'cond_frames', 'fps_id', 'motion_bucket_id', 'cond_aug',
      'scaled_relative_angles', 'scaled_relative_pose')}
  frozen_layouts = {k: v for k, v in layouts.items() if k != 'network'}
  video_path = os.path.join(workdir, 'demo.mp4')
  generated = trainer.write_preview(cfg, layouts['network'], frozen_layouts, params, frozen, batch, mesh,
                                    video_path, key=jax.random.key(args.seed))
  t_sample = time.perf_counter() - t0

  # 4. metrics ------------------------------------------------------------------------------------------
  from gcd_jax.evaluate.metrics import psnr, ssim  # pylint: disable=g-import-not-at-top
  target = np.clip((batch['jpg'][:1] + 1) / 2, 0, 1)
  psnr_db = float(jnp.mean(psnr(jnp.asarray(generated), jnp.asarray(target))))
  ssim_v = float(jnp.mean(ssim(jnp.asarray(generated), jnp.asarray(target))))
  metrics = dict(scene=int(example['scene_idx'][0]), split='test', psnr_db=round(psnr_db, 3), ssim=round(ssim_v, 4),
                 train_steps=int(result['step']), final_loss=result['metrics'].get('loss'),
                 seconds=dict(data=round(t_data, 1), train=round(t_train, 1), sample=round(t_sample, 1),
                              total=round(time.perf_counter() - t_start, 1)),
                 video=video_path, checkpoints=os.path.join(workdir, 'train', 'checkpoints'))
  tmp = os.path.join(workdir, 'demo_metrics.json.tmp')
  with open(tmp, 'w') as f:
    json.dump(metrics, f, indent=1)
  os.replace(tmp, os.path.join(workdir, 'demo_metrics.json'))
  print(f'[demo] test scene {metrics["scene"]}: PSNR {psnr_db:.2f} dB, SSIM {ssim_v:.3f} after '
        f'{metrics["train_steps"]} steps (loss {metrics["final_loss"]}); video {video_path}; '
        f'total {metrics["seconds"]["total"]:.0f}s', flush=True)
  return 0


if __name__ == '__main__':
  p = argparse.ArgumentParser()
  add_arguments(p)
  sys.exit(run(p.parse_args()))
