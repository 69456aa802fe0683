"""`GCDPipeline`: a GCD model as one Python object — load it, give it a video and a camera move, get videos.

  from gcd_jax.pipeline import GCDPipeline
  pipe = GCDPipeline.from_pretrained('demo')   # the packaged demo model; or a model folder / training workdir
  out = pipe('clip.mp4', azimuth=40, elevation=10, radius=0, trajectory='gradual', num_samples=2, seed=0)
  out.videos        # float32 [num_samples, T, H, W, 3] in [0, 1]
  out.spherical_dst # [T, 3] the target camera per frame, (Δaz°, Δel°, Δr) relative to the input camera

This is the engine of `gcd-jax sample` (which adds the output files) and it samples through the project's one
sampler (gcd_jax/diffusion/sampler.py, per-video noise keys) as `gcd-jax evaluate` does. The flow follows the
reference's `scripts/infer.py` (docs/reference.md §5.6): clip frames = frame_start + stride·[0..T−1], centre
crop to the model's aspect, bilinear resize, the camera path from the checkpoint's trajectory preset, the motion
bucket from the camera move (§1.3), fps_id = the frame rate after subsampling. Every check on the request (input
readable and long enough, size a multiple the model needs, memory, camera range) runs before the model loads.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Sequence

import numpy as np


# `from_pretrained('demo')`: the demo model shipped in the package (docs/demo_model.md).
DEMO_MODEL = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'assets', 'demo_model')


@dataclasses.dataclass(frozen=True)
class SamplerSettings:
  """How to sample (the reference's infer.py defaults)."""
  steps: int = 25                 # Euler steps (§2.4)
  guidance_min: float = 1.0       # CFG scale at the first frame, linear to guidance_max at the last (§2.4)
  guidance_max: float = 1.5
  cond_aug: float = 0.02          # noise on the conditioning frames (SVD cond_aug)
  decoding_t: int = 14            # frames the VAE decodes together (capped at the frame count)
  frame_rate: int = 12            # fps after subsampling (= fps_id)
  motion_bucket: int = 127        # used only with force_motion_bucket or models without a camera range
  force_motion_bucket: bool = False

  def check(self) -> None:
    from gcd_jax.evaluate.inference import InputError  # pylint: disable=g-import-not-at-top
    if self.steps < 2:  # the Euler schedule runs from σ_max to σ_min (diffusion/discretization.py)
      raise InputError(f'steps={self.steps}: must be ≥ 2 (the sampler steps from σ_max to σ_min)')
    if self.frame_rate < 1:
      raise InputError(f'frame_rate={self.frame_rate}: must be ≥ 1 (the FPS after subsampling)')
    if self.decoding_t < 1:
      raise InputError(f'decoding_t={self.decoding_t}: must be ≥ 1')


def add_sampler_arguments(parser, *, samples_help: str) -> None:
  """The sampler options shared by `gcd-jax sample` and `gcd-jax evaluate` (the fields of SamplerSettings
  that both take; defaults are the reference's)."""
  d = SamplerSettings()
  parser.add_argument('--num-samples', type=int, default=2, help=samples_help)
  parser.add_argument('--steps', type=int, default=d.steps, help='Euler sampler steps (the reference: 25)')
  parser.add_argument('--guidance-min', type=float, default=d.guidance_min,
                      help='classifier-free guidance scale at the first frame (linear to --guidance-max at the last)')
  parser.add_argument('--guidance-max', type=float, default=d.guidance_max, help='guidance scale at the last frame')
  parser.add_argument('--cond-aug', type=float, default=d.cond_aug,
                      help='noise added to the conditioning frames (SVD cond_aug)')
  parser.add_argument('--decoding-t', type=int, default=d.decoding_t,
                      help='frames decoded together by the VAE (capped at the frame count; lower saves memory)')


@dataclasses.dataclass(frozen=True)
class InputSettings:
  """Which frames of a video file / image folder / image to use, at what size (0: the checkpoint's own)."""
  frame_start: int = 0
  frame_stride: int = 2
  width: int = 0
  height: int = 0
  num_frames: int = 0
  center_crop: bool = True


@dataclasses.dataclass
class PipelineOutput:
  videos: np.ndarray          # float32 [S, T, H, W, 3] in [0, 1]
  input: np.ndarray           # float32 [T, H, W, 3] in [0, 1], as the model saw it
  spherical_dst: np.ndarray   # [T, 3] (Δaz°, Δel°, Δr) of the target camera per frame
  motion_bucket_id: int
  clip_frames: list[int] = dataclasses.field(default_factory=list)
  warnings: list[str] = dataclasses.field(default_factory=list)


class GCDPipeline:
  """A restored GCD model and its sampler. Build with `from_pretrained`; call with a video and a camera."""

  def __init__(self, checkpoint: str, model_cfg, train_cfg=None, *, progress: bool = True, warn=None):
    from gcd_jax.evaluate import generator as gen_lib  # pylint: disable=g-import-not-at-top
    gen_lib.check_checkpoint_matches(checkpoint, model_cfg)
    self.checkpoint = checkpoint
    self.model_cfg = model_cfg
    self.train_cfg = train_cfg
    self.progress = progress
    self.warn = warn or (lambda message: None)
    self._generators = {}

  @classmethod
  def from_pretrained(cls, path: str, *, step: int | None = None, weights: str = 'auto', config: str = '',
                      overrides: Sequence[str] = (), progress: bool = True, warn=None) -> 'GCDPipeline':
    """path: 'demo' (the packaged demo model), a `gcd-jax convert` / `train --export` model folder (on disk,
    or `ORG/REPO[/SUBFOLDER]` on the Hugging Face Hub), or a training workdir (its latest step, or
    `step`; EMA weights when the run keeps them, or `weights='raw'`). config: a model preset or config file
    overriding the one stored with the checkpoint (with `overrides`, `--config.FIELD=VALUE` style)."""
    from gcd_jax.evaluate import generator as gen_lib  # pylint: disable=g-import-not-at-top
    from gcd_jax.train import workdir  # pylint: disable=g-import-not-at-top
    from gcd_jax.convert import hub  # pylint: disable=g-import-not-at-top
    path = DEMO_MODEL if path == 'demo' and not os.path.exists('demo') else hub.resolve_model_folder(path)
    checkpoint = workdir.resolve_model(path, step=step, weights=weights)
    if config:
      model_cfg, train_cfg = gen_lib.resolve_config(config, overrides)
    else:
      model_cfg, train_cfg = gen_lib.config_from_checkpoint(checkpoint)
    return cls(checkpoint, model_cfg, train_cfg, progress=progress, warn=warn)

  # ------------------------------------------------------------------------------------------ properties
  @property
  def num_frames(self) -> int:
    return int(self.model_cfg.num_frames)

  @property
  def frame_size(self) -> tuple[int, int]:
    """(width, height) the checkpoint was trained at."""
    from gcd_jax.evaluate.inference import default_frame_size  # pylint: disable=g-import-not-at-top
    return default_frame_size(self.model_cfg, self.train_cfg)

  def trajectory_config(self, trajectory: str = 'gradual', preset: str = ''):
    """The checkpoint's camera-sampling preset (its Δ ranges set the motion bucket and the trained range)."""
    from gcd_jax.geometry import trajectory as trajectory_lib  # pylint: disable=g-import-not-at-top
    if trajectory not in ('gradual', 'direct'):
      from gcd_jax.evaluate.inference import InputError  # pylint: disable=g-import-not-at-top
      raise InputError(f"trajectory={trajectory!r}: choose 'gradual' (the camera moves over the clip) or 'direct'")
    name = preset or (self.train_cfg.data.trajectory if self.train_cfg is not None and 'data' in self.train_cfg
                      else 'kubric_gradual_max90')
    cfg = trajectory_lib.trajectory_config(name)
    cfg.num_frames = self.num_frames
    return cfg

  # ------------------------------------------------------------------------------------------- input
  def load_video(self, path: str, settings: InputSettings = InputSettings(), *, check_memory: bool = True,
                 decoding_t: int = 14) -> tuple[np.ndarray, list[int]]:
    """A video file, image folder or one image → (float32 [T, H, W, 3] in [0, 1], clip frame indices)."""
    from gcd_jax.evaluate import generator as gen_lib  # pylint: disable=g-import-not-at-top
    from gcd_jax.evaluate import inference  # pylint: disable=g-import-not-at-top
    t = int(settings.num_frames or self.num_frames)
    if t < 1:
      raise inference.InputError('num_frames must be ≥ 1')
    width, height = self.frame_size
    width, height = settings.width or width, settings.height or height
    multiple = gen_lib.required_multiple(self.model_cfg)
    spec = inference.InputSpec(path=path, num_frames=t, frame_start=settings.frame_start,
                               frame_stride=settings.frame_stride, frame_width=width, frame_height=height,
                               center_crop=settings.center_crop, size_multiple=multiple)
    inference.validate_input(spec)
    if check_memory:
      inference.check_fits(self.model_cfg, num_frames=t, width=width, height=height, decoding_t=decoding_t,
                           multiple=multiple)
    return inference.prepare_input(spec), spec.clip_frames().tolist()

  def _as_input(self, video, settings: InputSettings, decoding_t: int) -> tuple[np.ndarray, list[int]]:
    if isinstance(video, (str, os.PathLike)):
      return self.load_video(os.fspath(video), settings, decoding_t=decoding_t)
    from gcd_jax.evaluate import inference  # pylint: disable=g-import-not-at-top
    v = np.asarray(video)
    if v.ndim != 4 or v.shape[-1] != 3 or v.shape[0] != self.num_frames:
      raise inference.InputError(f'video array of shape {v.shape}: expected [T={self.num_frames}, H, W, 3]')
    u8 = v if v.dtype == np.uint8 else (np.clip(v, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    width, height = settings.width or self.frame_size[0], settings.height or self.frame_size[1]
    return inference.center_crop_resize(u8, width, height, settings.center_crop), list(range(len(v)))

  # ---------------------------------------------------------------------------------------- sampling
  def _generator(self, num_samples: int, s: SamplerSettings):
    from gcd_jax.evaluate import generator as gen_lib  # pylint: disable=g-import-not-at-top
    key = (num_samples, s.steps, s.guidance_min, s.guidance_max, s.decoding_t)
    if key not in self._generators:
      self._generators[key] = gen_lib.VideoGenerator(
          self.checkpoint, self.model_cfg, batch_size=1, steps=s.steps, num_samples=num_samples,
          guidance=(s.guidance_min, s.guidance_max), decoding_t=min(s.decoding_t, self.num_frames),
          progress=self.progress)
    return self._generators[key]

  def __call__(self, video, azimuth: float = 30.0, elevation: float = 15.0, radius: float = 0.0, *,
               trajectory: str = 'gradual', num_samples: int = 2, seed: int = 0,
               settings: SamplerSettings = SamplerSettings(), inputs: InputSettings = InputSettings(),
               trajectory_preset: str = '') -> PipelineOutput:
    """video: a path (video, image folder, image) or an array [T, H, W, 3] (uint8, or float in [0, 1]).
    (azimuth°, elevation°, radius m): the camera move relative to the input camera. → PipelineOutput."""
    from gcd_jax.evaluate import evaluate as ev  # pylint: disable=g-import-not-at-top
    from gcd_jax.evaluate import inference  # pylint: disable=g-import-not-at-top
    settings.check()
    if num_samples < 1:
      raise inference.InputError(f'num_samples={num_samples}: must be ≥ 1')
    if self.model_cfg.camera.embedder == 'pose':
      raise inference.InputError('the 6-DoF pose camera model cannot be sampled from a spherical camera move '
                                 '(the reference leaves it a stub, docs/reference.md §6 item 15); use a '
                                 'spherical-camera checkpoint')
    traj_cfg = self.trajectory_config(trajectory, trajectory_preset)
    delta = (float(azimuth), float(elevation), float(radius))
    warnings = inference.check_camera_request(
        delta, traj_cfg, motion_bucket=settings.motion_bucket, warn=self.warn)
    input01, clip_frames = self._as_input(video, inputs, settings.decoding_t)
    t = input01.shape[0]
    cam = inference.camera_conditioning(delta, t, gradual=trajectory == 'gradual', traj_cfg=traj_cfg,
                                        motion_bucket=settings.motion_bucket,
                                        force_motion_bucket=settings.force_motion_bucket)
    cond = input01 * 2.0 - 1.0
    noise = ev.cond_noise(seed, 0, cond.shape)
    example = {
        'cond_frames_without_noise': cond.astype(np.float32),
        'cond_frames': (cond + settings.cond_aug * noise).astype(np.float32),
        'fps_id': np.full((t,), settings.frame_rate, np.int32),
        'motion_bucket_id': np.full((t,), cam['motion_bucket_id'], np.int32),
        'cond_aug': np.full((t,), settings.cond_aug, np.float32),
        'scaled_relative_angles': cam['scaled_relative_angles'],
        'scaled_relative_pose': np.tile(np.eye(4, dtype=np.float32)[:3], (t, 1, 1)),
    }
    keys = np.stack([[ev.sample_seed(seed, 0, j) for j in range(num_samples)]])
    videos = self._generator(num_samples, settings)([example], keys)[0]
    return PipelineOutput(videos=videos, input=input01, spherical_dst=np.asarray(cam['spherical_dst']),
                          motion_bucket_id=int(cam['motion_bucket_id']), clip_frames=clip_frames,
                          warnings=warnings)
