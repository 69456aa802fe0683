r"""`gcd-jax sample`: new camera views of your own video, image folder or image (the reference's infer.py).

  gcd-jax sample --checkpoint ckpt/gcd_kubric --input clip.mp4 \
      --azimuth 30 --elevation 15 --radius 0 --gradual --out out/clip
  gcd-jax sample --checkpoint W --input clip.mp4 --azimuth 60 --out out/clip     # a training workdir

--checkpoint is a model folder (`gcd-jax convert`, `train --export`) or a training workdir (latest step, EMA
weights when the run keeps them; --step / --weights choose). Frame size, frame count and trajectory default
to the checkpoint's training config.

Outputs in --out: input.mp4, sample_{k}.mp4, side_by_side.mp4, trajectory.png, info.json.
"""

from __future__ import annotations

import argparse
import os
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument('--checkpoint', required=True,
                      help='gcd-jax model checkpoint folder, or a training workdir (see --step, --weights)')
  from gcd_jax.train.workdir import add_step_arguments  # pylint: disable=g-import-not-at-top
  add_step_arguments(parser, 'sample')
  parser.add_argument('--config', default='',
                      help="model config (preset or config file); default: the one stored with the checkpoint")
  parser.add_argument('--input', required=True, help='video file, folder of frames, or one image (a still)')
  parser.add_argument('--out', required=True, help='output folder')
  parser.add_argument('--azimuth', type=float, default=30.0, help='Δ azimuth in degrees (infer.py --delta_azimuth)')
  parser.add_argument('--elevation', type=float, default=15.0, help='Δ elevation in degrees')
  parser.add_argument('--radius', type=float, default=0.0, help='Δ radius in metres')
  motion = parser.add_mutually_exclusive_group()
  motion.add_argument('--gradual', dest='gradual', action='store_true', default=True,
                      help='camera moves over the clip (move_time T−1; default)')
  motion.add_argument('--direct', dest='gradual', action='store_false', help='every frame at the target pose')
  parser.add_argument('--trajectory', default='',
                      help="training trajectory preset: Δ ranges for the motion bucket, interpolation kind (default: "
                           "the checkpoint's training data, else kubric_gradual_max90)")
  parser.add_argument('--num-frames', type=int, default=0,
                      help="frames per clip (0: the checkpoint's model config, e.g. 14 for SVD/GCD)")
  parser.add_argument('--frame-start', type=int, default=0, help='first frame of the input video to use')
  parser.add_argument('--frame-stride', type=int, default=2,
                      help='use every Nth input frame (the reference subsamples 24-fps Kubric videos by 2)')
  parser.add_argument('--frame-rate', type=int, default=12, help='FPS after subsampling (= fps_id)')
  parser.add_argument('--frame-width', type=int, default=0,
                      help="model input width (0: the checkpoint's training size, e.g. 384 for SVD/GCD)")
  parser.add_argument('--frame-height', type=int, default=0,
                      help="model input height (0: the checkpoint's training size, e.g. 256 for SVD/GCD)")
  parser.add_argument('--no-center-crop', dest='center_crop', action='store_false',
                      help='resize the whole frame instead of centre-cropping it to the model aspect ratio')
  from gcd_jax.pipeline import add_sampler_arguments  # pylint: disable=g-import-not-at-top
  add_sampler_arguments(parser, samples_help='videos to generate (different noise)')
  parser.add_argument('--motion-id', type=int, default=127,
                      help='SVD motion bucket 0-255 (GCD Kubric models derive it from the camera move instead)')
  parser.add_argument('--force-custom-mbid', action='store_true',
                      help='use --motion-id even if the model synchronises it with the camera motion')
  parser.add_argument('--seed', type=int, default=0, help='noise seed (same seed, same videos)')
  parser.add_argument('--no-progress', action='store_true', help='no progress bar')


def run(args: argparse.Namespace) -> int:
  from gcd_jax.evaluate import inference  # pylint: disable=g-import-not-at-top
  from gcd_jax.pipeline import GCDPipeline, InputSettings, SamplerSettings  # pylint: disable=g-import-not-at-top
  if args.overrides and not args.config:
    raise inference.InputError('--config.FIELD overrides need --config (the model config they modify)')
  if args.num_samples < 1:
    raise inference.InputError('--num-samples must be ≥ 1')
  if os.path.exists(args.out) and (not os.path.isdir(args.out) or os.listdir(args.out)):
    raise inference.InputError(f'output {args.out} already exists and is not empty; choose another --out')
  warn = lambda m: print(f'gcd-jax sample: warning: {m}', file=sys.stderr, flush=True)  # noqa: E731
  pipe = GCDPipeline.from_pretrained(args.checkpoint, step=args.step, weights=args.weights, config=args.config,
                                     overrides=args.overrides, progress=not args.no_progress, warn=warn)
  settings = SamplerSettings(steps=args.steps, guidance_min=args.guidance_min, guidance_max=args.guidance_max,
                             cond_aug=args.cond_aug, decoding_t=args.decoding_t, frame_rate=args.frame_rate,
                             motion_bucket=args.motion_id, force_motion_bucket=args.force_custom_mbid)
  inputs = InputSettings(frame_start=args.frame_start, frame_stride=args.frame_stride, width=args.frame_width,
                         height=args.frame_height, num_frames=args.num_frames, center_crop=args.center_crop)
  out = pipe(args.input, args.azimuth, args.elevation, args.radius,
             trajectory='gradual' if args.gradual else 'direct', num_samples=args.num_samples, seed=args.seed,
             settings=settings, inputs=inputs, trajectory_preset=args.trajectory)
  info = {'input': os.path.abspath(args.input), 'checkpoint': os.path.abspath(pipe.checkpoint),
          'model': pipe.model_cfg.name, 'delta': [args.azimuth, args.elevation, args.radius],
          'gradual': bool(args.gradual), 'clip_frames': out.clip_frames, 'frame_rate': args.frame_rate,
          'motion_bucket_id': out.motion_bucket_id, 'steps': args.steps,
          'guidance': [args.guidance_min, args.guidance_max], 'seed': args.seed,
          'diversity': inference.uncertainty(out.videos), 'warnings': out.warnings}
  files = inference.save_outputs(args.out, out.input, out.videos, frame_rate=args.frame_rate,
                                 spherical_dst=out.spherical_dst, info=info)
  print('\n'.join([f'wrote {len(files)} files to {args.out}:'] + [f'  {os.path.basename(v)}' for v in files.values()]))
  return 0
