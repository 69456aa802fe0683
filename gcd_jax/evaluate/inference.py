r"""Custom videos → new camera views (the reference's `scripts/infer.py`, docs/reference.md §5.6).

  gcd-jax sample --checkpoint ckpt/gcd_kubric --input my_video.mp4 --azimuth 30 --elevation 15 \
      --radius 0 --gradual --out out/my_video

Flow (infer.py): clip_frames = frame_start + stride·[0..T−1]; load (video file, sorted image files of a
folder, or one image repeated as a still); centre-crop to the W/H aspect; bilinear resize (OpenCV
INTER_LINEAR = half-pixel centres, no antialias = `jax.image.resize(..., 'linear', antialias=False)`);
[0, 1] → [-1, 1]. The camera moves from (0, 0, 0) to (Δaz°, Δel°, Δr) with the checkpoint's trajectory
(`--gradual`: move_time = T−1, linear α; `--direct`: every frame at the end pose) → scaled_relative_angles;
motion_bucket_id is recomputed from the train Δ ranges unless forced (§1.3, §6 item 17); fps_id =
frame rate after subsampling. Everything that can be wrong with the input is checked before any model
compute (`prepare_input`).

Outputs in OUT: input.mp4, sample_{k}.mp4, side_by_side.mp4 (input | samples), trajectory.png (top and
side views of the source and target cameras around the orbit centre), and info.json. Saving fps =
(6 + frame_rate) // 2 as the reference.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os

import numpy as np

from gcd_jax.evaluate import media


class InputError(ValueError):
  """A user input that cannot be sampled from (reported before any compute)."""


@dataclasses.dataclass
class InputSpec:
  path: str
  num_frames: int = 14
  frame_start: int = 0
  frame_stride: int = 2
  frame_width: int = 384
  frame_height: int = 256
  center_crop: bool = True
  size_multiple: int = 64

  def clip_frames(self) -> np.ndarray:
    return self.frame_start + self.frame_stride * np.arange(self.num_frames)


def check_resolution(width: int, height: int, multiple: int = 64) -> None:
  """SVD/GCD need multiples of 64 (VAE ×8 · U-Net ×8); smaller models (tiny) pass their own multiple."""
  if width <= 0 or height <= 0 or width % multiple or height % multiple:
    fw, fh = max(multiple, round(width / multiple) * multiple), max(multiple, round(height / multiple) * multiple)
    raise InputError(f'frame size {width}×{height} is not a multiple of {multiple} (the VAE/U-Net need it); '
                     f'use e.g. --frame-width {fw} --frame-height {fh}')


def default_frame_size(model_cfg, train_cfg) -> tuple[int, int]:
  """(width, height) the checkpoint was trained at: its training config's data size, else SVD's 384×256 for
  the ×64 models and 48×32 for the small presets (their training size in configs/tiny.py)."""
  if train_cfg is not None and 'data' in train_cfg:
    return int(train_cfg.data.width), int(train_cfg.data.height)
  from gcd_jax.evaluate.generator import required_multiple  # pylint: disable=g-import-not-at-top
  return (384, 256) if required_multiple(model_cfg) >= 64 else (48, 32)


def sampling_memory_bytes(model_cfg, *, num_frames: int, width: int, height: int, batch: int = 1,
                          guidance: bool = True, decoding_t: int = 14) -> int:
  """Upper estimate of the peak memory of one sampling call, before compiling anything.

  What dominates at video sizes is the attention score matrices (softmax in float32): per U-Net level with
  spatial attention, rows × heads × N² for N = tokens per frame; the temporal attention is small (T² per
  pixel). Then the VAE decoder (mid-block attention over the latent tokens, and its widest activation at full
  resolution). Counted: parameters, 3 live score-sized buffers (scores, softmax, its input), and 6 live copies
  of the widest U-Net activation. XLA may fuse some of this away; it does not fuse away the scores.
  """
  import math  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  u, v = model_cfg.unet, model_cfg.vae
  f_vae = 2 ** (len(v.block_out_channels) - 1)
  h, w = height // f_vae, width // f_vae
  rows = batch * num_frames * (2 if guidance else 1)
  peak = 0
  widest = 0
  for level, mult in enumerate(u.channel_mult):
    ds = 2 ** level
    n = (h // ds) * (w // ds)
    ch = u.model_channels * mult
    widest = max(widest, rows * n * ch * 2 * 4)
    if ds in tuple(u.attention_resolutions):
      heads = ch // u.num_head_channels
      peak = max(peak, 3 * rows * heads * n * n * 4)
  chunk = min(decoding_t, num_frames) * batch
  vae_attn = 3 * chunk * (h * w) ** 2 * 4
  vae_act = 6 * chunk * 4 * max(height * width // 4 ** i * c for i, c in enumerate(v.block_out_channels))
  from gcd_jax.convert import checkpoint_io  # pylint: disable=g-import-not-at-top
  params = sum(4 * math.prod(a.shape) for comp in checkpoint_io.COMPONENTS
               for a in jax.tree.leaves(nnx.state(checkpoint_io.abstract_module(model_cfg, comp), nnx.Param)))
  return int(params + max(peak + 6 * widest, vae_attn, vae_act))


def available_memory_bytes() -> int:
  """Memory the sampler can use: the accelerator's (bytes_limit), else this host's available RAM."""
  import jax  # pylint: disable=g-import-not-at-top
  dev = jax.local_devices()[0]
  stats = dev.memory_stats() if dev.platform != 'cpu' else None
  if stats and stats.get('bytes_limit'):
    return int(stats['bytes_limit'])
  try:
    with open('/proc/meminfo') as f:
      info = {line.split(':')[0]: int(line.split()[1]) * 1024 for line in f}
    return int(info.get('MemAvailable', info['MemTotal']))
  except (OSError, KeyError, ValueError):
    return int(os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES'))


def check_fits(model_cfg, *, num_frames: int, width: int, height: int, batch: int = 1, decoding_t: int = 14,
               multiple: int = 64, available: int | None = None) -> int:
  """Refuses (InputError with the estimate and a size that fits) a sampling call that would not fit."""
  available = available_memory_bytes() if available is None else available
  need = sampling_memory_bytes(model_cfg, num_frames=num_frames, width=width, height=height, batch=batch,
                               decoding_t=decoding_t)
  if need <= 0.8 * available:
    return need
  fw, fh = width, height
  while (fw > multiple or fh > multiple) and sampling_memory_bytes(
      model_cfg, num_frames=num_frames, width=fw, height=fh, batch=batch, decoding_t=decoding_t) > 0.8 * available:
    fw, fh = max(multiple, (fw * 3 // 4) // multiple * multiple), max(multiple, (fh * 3 // 4) // multiple * multiple)
  raise InputError(f'sampling {num_frames} frames at {width}×{height} needs about {need / 2**30:.1f} GiB (attention '
                   f'scores dominate), more than the {available / 2**30:.1f} GiB available; use e.g. '
                   f'--frame-width {fw} --frame-height {fh}')


def validate_input(spec: InputSpec) -> dict:
  """Cheap checks (no decoding of the whole video): → {'kind', 'num_frames', 'size'}."""
  check_resolution(spec.frame_width, spec.frame_height, spec.size_multiple)
  if spec.frame_start < 0 or spec.frame_stride < 1:
    raise InputError(f'--frame-start must be ≥ 0 and --frame-stride ≥ 1 (got {spec.frame_start}, '
                     f'{spec.frame_stride})')
  if not os.path.exists(spec.path):
    raise InputError(f'input {spec.path} does not exist')
  if os.path.isdir(spec.path):
    kind = 'folder'
  elif os.path.splitext(spec.path)[1].lower() in media.IMAGE_EXTENSIONS:
    kind = 'image'
  elif os.path.splitext(spec.path)[1].lower() in media.VIDEO_EXTENSIONS:
    kind = 'video'
  else:
    raise InputError(f'input {spec.path}: unknown type; give a video ({", ".join(media.VIDEO_EXTENSIONS)}), '
                     f'an image ({", ".join(media.IMAGE_EXTENSIONS)}) or a folder of images')
  try:
    n, size = media.count_and_size(spec.path)
  except media.MediaError as e:
    raise InputError(str(e)) from e
  need = int(spec.clip_frames()[-1]) + 1
  if n is not None and n < need:
    raise InputError(f'{spec.path} has {n} frames but frame_start {spec.frame_start} + stride '
                     f'{spec.frame_stride} × {spec.num_frames - 1} needs {need}; lower --frame-stride / '
                     '--frame-start or give a longer video')
  return {'kind': kind, 'num_frames': n, 'size': size}


def center_crop_resize(frames_u8: np.ndarray, width: int, height: int, center_crop: bool = True) -> np.ndarray:
  """uint8 [T, H, W, 3] → float32 [T, height, width, 3] in [0, 1] (centre crop to the aspect, bilinear)."""
  import jax  # pylint: disable=g-import-not-at-top
  x = frames_u8.astype(np.float32) / 255.0
  h, w = x.shape[1:3]
  if center_crop:
    if w / h > width / height:  # too wide → crop width
      cw = int(round(h * width / height))
      x0 = (w - cw) // 2
      x = x[:, :, x0:x0 + cw]
    elif w / h < width / height:
      ch = int(round(w * height / width))
      y0 = (h - ch) // 2
      x = x[:, y0:y0 + ch]
  if x.shape[1:3] != (height, width):
    x = np.asarray(jax.image.resize(x, (x.shape[0], height, width, 3), 'linear', antialias=False))
  return np.clip(x, 0.0, 1.0)


def prepare_input(spec: InputSpec) -> np.ndarray:
  """→ video in [0, 1], float32 [T, H, W, 3]."""
  validate_input(spec)
  try:
    frames = media.read_frames(spec.path, spec.clip_frames())
  except media.MediaError as e:
    raise InputError(str(e)) from e
  return center_crop_resize(frames, spec.frame_width, spec.frame_height, spec.center_crop)


# Beyond these a camera delta is meaningless on GCD's orbit (a full turn; over the pole) or a typo.
DELTA_LIMITS = ((-360.0, 360.0), (-90.0, 90.0), (-100.0, 100.0))


def check_camera_request(delta, traj_cfg, *, motion_bucket: int | None = None, warn=None) -> list[str]:
  """Usage errors (InputError) for deltas no model can mean and motion buckets outside SVD's 0–255; a warning
  (returned, and passed to `warn`) for deltas outside the range the checkpoint was trained on."""
  names = ('--azimuth', '--elevation', '--radius')
  delta = [float(d) for d in delta]
  for name, d, (lo, hi) in zip(names, delta, DELTA_LIMITS):
    if not math.isfinite(d) or not lo <= d <= hi:
      raise InputError(f'{name} {d:g} is outside [{lo:g}, {hi:g}] (Δ in degrees / metres relative to the input '
                       'camera); GCD models are trained within ±180° azimuth, ±60° elevation, ±3 m')
  if motion_bucket is not None and not 0 <= int(motion_bucket) <= 255:
    raise InputError(f'--motion-id {motion_bucket} must be in 0–255 (SVD\'s motion bucket embedding)')
  trained = (traj_cfg.delta_azimuth_range, traj_cfg.delta_elevation_range, traj_cfg.delta_radius_range)
  warnings = [f'{name} {d:g} is outside the range this model was trained on [{lo:g}, {hi:g}]; expect a poor result'
              for name, d, (lo, hi) in zip(names, delta, trained) if not lo <= d <= hi]
  for w in warnings:
    (warn or (lambda m: None))(w)
  return warnings


def camera_conditioning(delta, num_frames: int, *, gradual: bool, traj_cfg, motion_bucket: int = 127,
                        force_motion_bucket: bool = False) -> dict:
  """`eval_utils.construct_batch` camera part: → scaled_relative_angles [T, 3], motion_bucket_id, plus the
  spherical src/dst used for the picture (relative to (0, 0, 0))."""
  from gcd_jax.geometry import trajectory  # pylint: disable=g-import-not-at-top
  delta = np.asarray(delta, np.float64)
  if not np.all(np.isfinite(delta)):
    raise InputError(f'camera delta {delta.tolist()} must be finite')
  start = np.zeros(3)
  move_time = num_frames - 1 if gradual else 0
  src, dst = trajectory.construct_trajectory(start, delta, num_frames, move_time, traj_cfg.trajectory)
  mb = int(motion_bucket)
  lo, hi = traj_cfg.motion_bucket_range
  if not force_motion_bucket and hi - lo > 0:
    mb = trajectory.motion_bucket_id(start, delta, traj_cfg.delta_azimuth_range,
                                     traj_cfg.delta_elevation_range, traj_cfg.motion_bucket_range)
    mb = int(np.clip(mb, lo, hi))  # a delta beyond the trained range maps past the buckets the model saw
  return {'scaled_relative_angles': trajectory.relative_angles(src, dst), 'motion_bucket_id': mb,
          'spherical_src': src, 'spherical_dst': dst}


def trajectory_picture(path: str, spherical_dst: np.ndarray, *, base=(0.0, 10.0, 15.0), size=(640, 320)) -> str:
  """Writes `trajectory_image` as a PNG at path."""
  return media.write_png(path, trajectory_image(spherical_dst, base=base, size=size))


def trajectory_image(spherical_dst: np.ndarray, *, base=(0.0, 10.0, 15.0), size=(640, 320), frame: int | None = None,
                     legend: bool = True) -> np.ndarray:
  """Top view (x–y) and side view (x–z) of the input camera and the target camera path on the GCD orbit
  (§1.4: centre (0, 0, 1), elevation = latitude). The input camera sits at `base` (az°, el°, r).
  frame: also mark the target camera of that frame (animations). → uint8 [H, W, 3]."""
  from PIL import Image, ImageDraw  # pylint: disable=g-import-not-at-top
  from gcd_jax.geometry import cameras  # pylint: disable=g-import-not-at-top
  base = np.asarray(base, np.float64)
  path_sph = base + np.asarray(spherical_dst, np.float64)
  src_pos = cameras.camera_position_from_spherical(*base)
  dst_pos = np.stack([cameras.camera_position_from_spherical(*p) for p in path_sph])
  w, h = size
  img = Image.new('RGB', (w, h), (255, 255, 255))
  d = ImageDraw.Draw(img)
  font = media._font(12)  # pylint: disable=protected-access
  extent = float(max(np.abs(dst_pos).max(), np.abs(src_pos).max(), 1.0)) * 1.15
  panels = (('top view (x, y)', 0, 1, 0), ('side view (x, z)', 0, 2, w // 2))
  for title, a, b, x_off in panels:
    pw = w // 2
    cx, cy = x_off + pw / 2, h / 2 + 8
    scale = (min(pw, h - 30) / 2 - 10) / extent

    def p(v, cx=cx, cy=cy, scale=scale, a=a, b=b):
      return cx + v[a] * scale, cy - v[b] * scale

    d.text((x_off + 8, 4), title, fill=(0, 0, 0), font=font)
    r = base[2] * scale
    if a == 0 and b == 1:  # the orbit circle of the input radius
      d.ellipse([cx - r, cy - r, cx + r, cy + r], outline=(200, 200, 200))
    centre = p(cameras.ORBIT_CENTER)
    d.ellipse([centre[0] - 3, centre[1] - 3, centre[0] + 3, centre[1] + 3], fill=(0, 0, 0))
    pts = [p(q) for q in dst_pos]
    if len(pts) > 1:
      d.line(pts, fill=(31, 119, 180), width=2)
    marks = [(src_pos, (44, 160, 44)), (dst_pos[-1], (214, 39, 40))]
    if frame is not None:
      marks.append((dst_pos[frame], (255, 150, 0)))
    for q, col in marks:
      x, y = p(q)
      d.ellipse([x - 5, y - 5, x + 5, y + 5], fill=col)
      d.line([x, y, centre[0], centre[1]], fill=col)
  if legend:
    d.text((8, h - 18), 'green: input camera   red: target (last frame)   blue: target path'
           + ('   orange: now' if frame is not None else ''), fill=(0, 0, 0), font=font)
  return np.asarray(img)


def save_outputs(out_dir: str, input01: np.ndarray, samples01: np.ndarray, *, frame_rate: int,
                 spherical_dst: np.ndarray, info: dict) -> dict:
  """input.mp4, sample_{k}.mp4, side_by_side.mp4, trajectory.png, info.json in out_dir (written to a
  staging folder next to it and renamed at the end: no partial output folder)."""
  from gcd_jax import fileio  # pylint: disable=g-import-not-at-top
  final = os.path.abspath(out_dir)
  with fileio.atomic_dir(final) as staging:
    files = _write_outputs(staging, input01, samples01, frame_rate=frame_rate, spherical_dst=spherical_dst,
                           info=info)
  return {k: os.path.join(final, os.path.basename(v)) for k, v in files.items()}


def _write_outputs(out_dir: str, input01, samples01, *, frame_rate: int, spherical_dst, info: dict) -> dict:
  fps = (6 + frame_rate) // 2  # infer.py's saving fps
  files = {'input': media.write_mp4(os.path.join(out_dir, 'input.mp4'), input01, fps)}
  for k, s in enumerate(samples01):
    files[f'sample_{k}'] = media.write_mp4(os.path.join(out_dir, f'sample_{k}.mp4'), s, fps)
  cols = [('input', input01)] + [(f'sample {k + 1}', s) for k, s in enumerate(samples01)]
  files['side_by_side'] = media.write_mp4(os.path.join(out_dir, 'side_by_side.mp4'),
                                          media.gallery_frames(cols), fps)
  files['trajectory'] = trajectory_picture(os.path.join(out_dir, 'trajectory.png'), spherical_dst)
  with open(os.path.join(out_dir, 'info.json'), 'w') as f:
    json.dump(dict(info, files={k: os.path.basename(v) for k, v in files.items()}), f, indent=1,
              default=lambda o: o.tolist() if hasattr(o, 'tolist') else str(o))
  return files


def uncertainty(samples01: np.ndarray) -> float:
  """Diversity of the samples (std over samples, mean over pixels), as infer.py's printout."""
  if samples01.shape[0] < 2:
    return math.nan
  return float(np.mean(np.std(samples01, axis=0)))
