r"""`gcd-jax demo`: the packaged demo model re-renders held-out scenes from new cameras, with baselines.

  gcd-jax demo                       # workdir ./gcd_demo, a few minutes on 2 CPU cores, no download
  gcd-jax demo --workdir /tmp/demo --steps 10     # also run the trainer for 10 steps from the model first
  gcd-jax demo --num-samples 16      # 16 samples per scene, and their per-pixel mean scored too (~10 min more)

1. builds the demo's evaluation data (TFDS `procedural_4d/demo_eval`: the 10 held-out test scenes of the demo
   model's dataset, identical scenes, plus 16 of its training scenes) under WORKDIR/tensorflow_datasets;
2. with --steps N > 0, trains N steps of --config (configs/demo.py) starting from the model, in WORKDIR/train,
   and evaluates that workdir's raw weights (the warm-up keeps the learning rate near 0: the model barely
   moves); the default, 0, evaluates the packaged demo model itself (gcd_jax/assets/demo_model, trained from
   scratch with configs/demo.py, see docs/demo_model.md) and compiles no train step;
3. evaluates with `gcd-jax evaluate` on every held-out scene (one sample each, or --num-samples; the reference
   sampler: 25 steps, guidance 1.0 → 1.5) into WORKDIR/eval (WORKDIR/eval_<N>samples), with the baselines:
   copying the input video, its mean frame, and the reprojection of the input view (an upper reference); with
   several samples, also the per-pixel mean of each scene's samples (docs/evaluation.md);
4. writes WORKDIR/demo.mp4 (input | generated | ground truth | camera path, ×4 upscaled, labelled; 4 scenes,
   looped to 4 s; with several samples the first is shown, and their per-pixel mean beside it), WORKDIR/demo_strip.png (one scene's frames) and WORKDIR/demo_metrics.json, and prints
   the metrics table.

A second run reuses the data, the training checkpoint, the finished scenes and the compiled programs.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import numpy as np

DEMO_SCENES = 4  # scenes shown in demo.mp4 (all held-out scenes are evaluated)
UPSCALE = 4


def packaged_model() -> str:
  from gcd_jax.pipeline import DEMO_MODEL  # pylint: disable=g-import-not-at-top
  return DEMO_MODEL


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument('--workdir', default='gcd_demo', help='output folder (default ./gcd_demo; a rerun resumes)')
  parser.add_argument('--checkpoint', default='',
                      help='model to start from and evaluate (default: the packaged demo model)')
  parser.add_argument('--steps', type=int, default=0,
                      help='training steps from the model before evaluating (default 0: evaluate it as is)')
  parser.add_argument('--data-dir', default='',
                      help='TFDS data dir for procedural_4d/demo_eval (default WORKDIR/tensorflow_datasets)')
  parser.add_argument('--seed', type=int, default=0, help='sampling seed (default 0)')
  parser.add_argument('--num-samples', type=int, default=1,
                      help='samples per held-out scene (default 1); with more, their per-pixel mean is scored too '
                           'and the video shows the first')
  parser.add_argument('--config', default='configs/demo.py',
                      help='training config of the few demo steps (and its --config.FIELD=VALUE overrides)')
  parser.add_argument('--no-progress', action='store_true', help='no progress bars')


def run(args) -> int:
  t_start = time.perf_counter()
  os.environ.setdefault('JAX_PLATFORMS', 'cpu')
  workdir = os.path.abspath(args.workdir)
  model = os.path.abspath(args.checkpoint or packaged_model())
  from gcd_jax.cli import UsageError  # pylint: disable=g-import-not-at-top
  if not os.path.isfile(os.path.join(model, 'metadata.json')):
    raise UsageError(f'{model} is not a gcd-jax model folder (metadata.json missing); pass --checkpoint with a '
                     '`gcd-jax convert` / `train --export` folder')
  if args.steps < 0:
    raise UsageError(f'--steps {args.steps}: must be ≥ 0')
  if args.num_samples < 1:
    raise UsageError(f'--num-samples {args.num_samples}: must be ≥ 1')
  os.makedirs(workdir, exist_ok=True)
  from absl import flags  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()  # Grain reads absl flags
  from data_pipelines import tfds_builders  # pylint: disable=g-import-not-at-top
  from gcd_jax import config_flags  # pylint: disable=g-import-not-at-top
  seconds = {}

  # 1. data -----------------------------------------------------------------------------------------------
  data_dir = os.path.abspath(args.data_dir or os.path.join(workdir, 'tensorflow_datasets'))
  t0 = time.perf_counter()
  builder = tfds_builders.get_builder('procedural_4d', data_dir=data_dir, config='demo_eval')
  if not builder.is_prepared():
    print(f'[demo] rendering the held-out procedural scenes into {data_dir} (about a minute) ...', flush=True)
    if args.no_progress:  # as `gcd-jax data build --no-progress`
      import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
      tfds.disable_progress_bar()
    tfds_builders.build('procedural_4d', data_dir=data_dir, config='demo_eval')
  seconds['data'] = time.perf_counter() - t0

  # 2. train a few steps from the demo model ---------------------------------------------------------------
  config = config_flags.load_config(args.config, args.overrides)
  config.init_checkpoint = model
  config.data.data_dir = data_dir
  config.data.builder_config = 'demo_eval'
  evaluated = model
  if args.steps > 0:
    from gcd_jax.train import trainer  # pylint: disable=g-import-not-at-top
    config.total_steps = args.steps
    config.checkpoint.every_steps = args.steps
    config.log_every_steps = max(1, args.steps // 5)
    t0 = time.perf_counter()
    print(f'[demo] training {args.steps} steps of configs/demo.py from {model}', flush=True)
    trainer.train(config, os.path.join(workdir, 'train'))
    seconds['train'] = time.perf_counter() - t0
    evaluated = os.path.join(workdir, 'train')

  # 3. evaluate the held-out scenes with `gcd-jax evaluate` -------------------------------------------------
  from gcd_jax.evaluate import evaluate as ev  # pylint: disable=g-import-not-at-top
  from gcd_jax.train import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  # One folder per sample count: `evaluate` refuses to mix settings in one folder.
  eval_dir = os.path.join(workdir, 'eval' if args.num_samples == 1 else f'eval_{args.num_samples}samples')
  t0 = time.perf_counter()
  print(f'[demo] evaluating the held-out test scenes ({args.num_samples} sample(s) each; sampling: 25 steps, '
        'guidance 1.0 → 1.5)', flush=True)
  request = ev.EvalRequest(
      checkpoint=workdir_lib.resolve_model(evaluated, weights='raw' if args.steps else 'auto'), out=eval_dir,
      data=_data_preset(config), data_dir=data_dir, split='test', num_samples=args.num_samples, seed=args.seed,
      decoding_t=int(config.model.num_frames), progress=not args.no_progress)
  summary = ev.evaluate(request)
  seconds['evaluate'] = time.perf_counter() - t0

  # 4. video, strip, metrics ---------------------------------------------------------------------------------
  t0 = time.perf_counter()
  results = {r['scene']: r for r in ev.load_scene_results(eval_dir)}
  table = ev.aggregate(list(results.values()))
  scenes = sorted(results)[:DEMO_SCENES]
  fps = 3.0
  video = demo_video(eval_dir, scenes, results, config)
  from gcd_jax.evaluate import media  # pylint: disable=g-import-not-at-top
  video_path = media.write_mp4(os.path.join(workdir, 'demo.mp4'), np.concatenate([video, video]), fps=fps)
  strip_path = media.write_png(os.path.join(workdir, 'demo_strip.png'), frame_strip(eval_dir, scenes[0],
                                                                                    results[scenes[0]]))
  seconds['video'] = time.perf_counter() - t0
  seconds['total'] = time.perf_counter() - t_start
  metrics = dict(
      model=model, evaluated=evaluated, train_steps=args.steps, scenes=len(results), samples_per_scene=args.num_samples,
      seed=args.seed, **{k: round(v['mean'], 4) for k, v in table.items() if 'mean' in v and
                         k.split('_')[0] in ('psnr', 'ssim') and math.isfinite(v['mean'])},
      seconds={k: round(v, 1) for k, v in seconds.items()}, video=video_path, strip=strip_path,
      eval_dir=eval_dir)
  from gcd_jax import fileio  # pylint: disable=g-import-not-at-top
  fileio.write_json(os.path.join(workdir, 'demo_metrics.json'), metrics)
  print(summary)
  m = lambda k: table[k]['mean']  # noqa: E731
  print(f'[demo] {len(results)} held-out scenes, frames where the camera has moved (1-{config.model.num_frames - 1}): '
        f'generated {m("psnr_from1"):.2f} dB / SSIM {m("ssim_from1"):.3f}; copy the input {m("psnr_copy_from1"):.2f} dB'
        f' / {m("ssim_copy_from1"):.3f}; mean frame {m("psnr_meanframe_from1"):.2f} dB / '
        f'{m("ssim_meanframe_from1"):.3f}; reprojection (upper reference) {m("psnr_reproject_from1"):.2f} dB / '
        f'{m("ssim_reproject_from1"):.3f}'
        + (f'; per-pixel mean of the {args.num_samples} samples {m("psnr_samplemean_from1"):.2f} dB / '
           f'{m("ssim_samplemean_from1"):.3f}' if 'psnr_samplemean_from1' in table else ''), flush=True)
  print(f'[demo] video {video_path}; frame strip {strip_path}; total {seconds["total"]:.0f}s', flush=True)
  return 0


def _data_preset(config) -> str:
  d = config.data
  return (f'tiny,builder_config={d.builder_config},height={d.height},width={d.width},'
          f'render_height={d.render_height},render_width={d.render_width},num_frames={d.num_frames},'
          f'trajectory={d.trajectory}')


def _upscale(frames: np.ndarray) -> np.ndarray:
  return np.repeat(np.repeat(frames, UPSCALE, axis=-3), UPSCALE, axis=-2)


def _camera_text(control: dict) -> str:
  d = np.asarray(control['spherical_end'], np.float64) - np.asarray(control['spherical_start'], np.float64)
  return f'camera move: az {d[0]:+.0f}°, el {d[1]:+.0f}°, r {d[2]:+.1f} m'  # the default font has no Δ


def _camera_path(control: dict, num_frames: int, config):
  from gcd_jax.geometry import trajectory  # pylint: disable=g-import-not-at-top
  tcfg = trajectory.trajectory_config(config.data.trajectory)
  start = np.asarray(control['spherical_start'], np.float64)
  delta = np.asarray(control['spherical_end'], np.float64) - start
  _, rel = trajectory.construct_trajectory(np.zeros(3), delta, num_frames,
                                           num_frames - 1 if tcfg.gradual else 0, tcfg.trajectory)
  return start, rel


def demo_video(eval_dir: str, scenes, results: dict, config) -> np.ndarray:
  """uint8 [T, H, W, 3]: one row per scene, input | generated (the first sample) | [the per-pixel mean of the
  scene's samples, when there are several] | ground truth | camera path, captioned."""
  from gcd_jax.evaluate import evaluate as ev  # pylint: disable=g-import-not-at-top
  from gcd_jax.evaluate import inference, media  # pylint: disable=g-import-not-at-top
  rows = []
  for scene in scenes:
    v = ev.load_scene_videos(eval_dir, scene)
    t = v['input'].shape[0]
    base, rel = _camera_path(results[scene]['control'], t, config)
    frame = results[scene]['frame']
    panels = [(f'input  {scene}', _upscale(v['input'])),
              (f'generated  ({np.nanmean(frame["psnr"][0]):.1f} dB)', _upscale(v['samples'][0]))]
    if len(v['samples']) > 1:
      mean = np.round(v['samples'].astype(np.float32).mean(0)).astype(np.uint8)
      panels.append((f'{len(v["samples"])}-sample mean ({np.nanmean(frame["psnr_samplemean"][0]):.1f} dB)',
                     _upscale(mean)))
    panels.append(('ground truth (new camera)', _upscale(v['gt'])))
    h = panels[0][1].shape[1]
    cams = np.stack([inference.trajectory_image(rel[:i + 1], base=base, size=(2 * h, h), frame=i, legend=False)
                     for i in range(t)])
    panels.append((_camera_text(results[scene]['control']), cams))
    frames = []
    for i in range(t):
      frames.append(np.concatenate([media.label(p[i], text, bar=18) for text, p in panels], axis=1))
    rows.append(np.stack(frames))
  return np.concatenate(rows, axis=1)


def frame_strip(eval_dir: str, scene: str, result: dict) -> np.ndarray:
  """uint8 image: rows input / generated / ground truth, one column per frame (×4), captioned."""
  from gcd_jax.evaluate import evaluate as ev  # pylint: disable=g-import-not-at-top
  from gcd_jax.evaluate import media  # pylint: disable=g-import-not-at-top
  v = ev.load_scene_videos(eval_dir, scene)
  rows = []
  for name, frames in (('input', v['input']), ('generated', v['samples'][0]), ('ground truth', v['gt'])):
    cells = [media.label(_upscale(f), f'{name} t={i}', bar=16) for i, f in enumerate(frames)]
    rows.append(np.concatenate(cells, axis=1))
  strip = np.concatenate(rows, axis=0)
  return media.label(strip, f'{scene}: {_camera_text(result["control"])}', bar=20)


if __name__ == '__main__':
  p = argparse.ArgumentParser()
  add_arguments(p)
  sys.exit(run(p.parse_args()))
