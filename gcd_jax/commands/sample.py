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
  parser.add_argument('--num-samples', type=int, default=2, help='videos to generate (different noise)')
  parser.add_argument('--steps', type=int, default=25, help='Euler sampler steps (the reference: 25)')
  parser.add_argument('--guidance-min', type=float, default=1.0,
                      help='classifier-free guidance scale at the first frame (linear to --guidance-max at the last)')
  parser.add_argument('--guidance-max', type=float, default=1.5, help='guidance scale at the last frame')
  parser.add_argument('--motion-id', type=int, default=127,
                      help='SVD motion bucket 0-255 (GCD Kubric models derive it from the camera move instead)')
  parser.add_argument('--force-custom-mbid', action='store_true',
                      help='use --motion-id even if the model synchronises it with the camera motion')
  parser.add_argument('--cond-aug', type=float, default=0.02,
                      help='noise added to the conditioning frames (SVD cond_aug)')
  parser.add_argument('--decoding-t', type=int, default=14,
                      help='frames decoded together by the VAE (capped at the frame count; lower saves memory)')
  parser.add_argument('--seed', type=int, default=0, help='noise seed (same seed, same videos)')
  parser.add_argument('--no-progress', action='store_true', help='no progress bar')


def run(args: argparse.Namespace) -> int:
  from gcd_jax.evaluate import inference  # pylint: disable=g-import-not-at-top
  from gcd_jax.train import workdir  # pylint: disable=g-import-not-at-top
  if args.overrides and not args.config:
    raise inference.InputError('--config.FIELD overrides need --config (the model config they modify)')
  args.checkpoint = workdir.resolve_model(args.checkpoint, step=args.step, weights=args.weights)
  print(inference.sample_from_args(args))
  return 0
