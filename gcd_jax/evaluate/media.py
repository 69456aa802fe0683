"""Video/image I/O and pictures for evaluation and inference (no matplotlib / OpenCV needed).

Frames are float arrays in [0, 1] `[T, H, W, 3]` or uint8. Writers are atomic: a file appears complete
or not at all (written to a temporary name in the same folder, then renamed).
"""

from __future__ import annotations

import math
import os
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from gcd_jax import fileio

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.tiff', '.tif', '.webp')
VIDEO_EXTENSIONS = ('.mp4', '.avi', '.mov', '.flv', '.mkv', '.webm', '.gif')


class MediaError(ValueError):
  """An input video / image that cannot be used (unreadable, too short, ...)."""


def to_uint8(frames) -> np.ndarray:
  frames = np.asarray(frames)
  if frames.dtype == np.uint8:
    return frames
  return (np.clip(frames, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def write_mp4(path: str, frames, fps: float) -> str:
  """frames [T, H, W, 3] → H.264 mp4 (imageio-ffmpeg). H and W are padded with black up to multiples of
  16 (codec macro blocks) rather than resized, so pixels stay untouched."""
  import imageio.v2 as imageio  # pylint: disable=g-import-not-at-top
  f = to_uint8(frames)
  h, w = f.shape[1:3]
  ph, pw = (-h) % 16, (-w) % 16  # macro blocks; pad (not resize) so pixels stay untouched
  if ph or pw:
    f = np.pad(f, ((0, 0), (0, ph), (0, pw), (0, 0)))
  with fileio.atomic_file(path, '.mp4') as tmp:
    imageio.mimwrite(tmp, list(f), format='FFMPEG', fps=float(fps), macro_block_size=16, quality=8,
                     ffmpeg_log_level='error')
  return path


def write_gif(path: str, frames, fps: float) -> str:
  f = to_uint8(frames)
  images = [Image.fromarray(x) for x in f]
  with fileio.atomic_file(path, '.gif') as tmp:
    images[0].save(tmp, format='GIF', save_all=True, append_images=images[1:],
                   duration=int(round(1000.0 / max(fps, 1e-3))), loop=0)
  return path


def write_png(path: str, image) -> str:
  with fileio.atomic_file(path, '.png') as tmp:
    Image.fromarray(to_uint8(image)).save(tmp, format='PNG')
  return path


def _font(size: int = 11):
  try:
    return ImageFont.load_default(size=size)
  except TypeError:  # Pillow < 10.1
    return ImageFont.load_default()


def label(image: np.ndarray, text: str, bar: int = 14) -> np.ndarray:
  """Black caption bar above an image [H, W, 3] uint8 → [H + bar, W, 3]."""
  w = image.shape[1]
  caption = Image.new('RGB', (w, bar))  # drawn on its own strip: descenders never touch the image's pixels
  ImageDraw.Draw(caption).text((2, 1), text, fill=(255, 255, 255), font=_font(max(bar - 3, 8)))
  return np.concatenate([np.asarray(caption), to_uint8(image)], axis=0)


def gallery_frames(columns: Sequence[tuple[str, np.ndarray]]) -> np.ndarray:
  """Side by side videos with captions: [(caption, frames [T, H, W, 3])] → uint8 [T, H + bar, ΣW, 3]."""
  t = columns[0][1].shape[0]
  narrow = columns[0][1].shape[2] < 128  # tiny videos: short captions ('input' → 'in', 'sample 2' → 's2')
  short = {'input': 'in', 'ground truth': 'gt'}
  out = []
  for i in range(t):
    row = []
    for j, (name, v) in enumerate(columns):
      text = (short.get(name, name.replace('sample ', 's')) if narrow else name) + (f' t={i}' if j == 0 else '')
      row.append(label(to_uint8(v[i]), text))
    out.append(np.concatenate(row, axis=1))
  return np.stack(out)


# -------------------------------------------------------------------------------------------- plots


PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]


def line_plot(path: str, series: dict[str, Sequence[float]], *, title: str, xlabel: str, ylabel: str,
              bands: dict[str, Sequence[float]] | None = None, size=(640, 400)) -> str:
  """A small line chart (PIL): series name → y values over x = 0..n−1; optional ±band per series."""
  w, h = size
  left, right, top, bottom = 60, 150, 30, 40
  img = Image.new('RGB', (w, h), (255, 255, 255))
  d = ImageDraw.Draw(img)
  font = _font(11)
  vals = [v for s in series.values() for v in s if np.isfinite(v)]
  if bands:
    for k, b in bands.items():
      vals += [m + s for m, s in zip(series[k], b) if np.isfinite(m + s)]
      vals += [m - s for m, s in zip(series[k], b) if np.isfinite(m - s)]
  lo, hi = (min(vals), max(vals)) if vals else (0.0, 1.0)
  if hi - lo < 1e-9:
    lo, hi = lo - 0.5, hi + 0.5
  pad = 0.05 * (hi - lo)
  lo, hi = lo - pad, hi + pad
  n = max(len(s) for s in series.values())
  pw, ph = w - left - right, h - top - bottom

  def xy(i, v):
    x = left + (pw * i / max(n - 1, 1))
    y = top + ph * (1 - (v - lo) / (hi - lo))
    return x, y

  d.rectangle([left, top, left + pw, top + ph], outline=(0, 0, 0))
  for k in range(5):  # y ticks
    v = lo + (hi - lo) * k / 4
    _, y = xy(0, v)
    d.line([left - 4, y, left, y], fill=(0, 0, 0))
    d.text((4, y - 6), f'{v:.3g}', fill=(0, 0, 0), font=font)
  for i in range(n):  # x ticks
    x, _ = xy(i, lo)
    d.line([x, top + ph, x, top + ph + 4], fill=(0, 0, 0))
    if n <= 20 or i % math.ceil(n / 20) == 0:
      d.text((x - 3, top + ph + 6), str(i), fill=(0, 0, 0), font=font)
  d.text((left, 8), title, fill=(0, 0, 0), font=_font(13))
  d.text((left + pw // 2 - 20, h - 16), xlabel, fill=(0, 0, 0), font=font)
  d.text((4, top - 18), ylabel, fill=(0, 0, 0), font=font)
  for j, (name, ys) in enumerate(series.items()):
    col = PALETTE[j % len(PALETTE)]
    pts = [xy(i, v) for i, v in enumerate(ys) if np.isfinite(v)]
    if bands and name in bands:
      for i, (m, s) in enumerate(zip(ys, bands[name])):
        if np.isfinite(m) and np.isfinite(s):
          x, y0 = xy(i, m - s)
          _, y1 = xy(i, m + s)
          d.line([x, y0, x, y1], fill=tuple(c // 2 + 127 for c in col), width=3)
    if len(pts) > 1:
      d.line(pts, fill=col, width=2)
    for x, y in pts:
      d.ellipse([x - 2, y - 2, x + 2, y + 2], fill=col)
    d.line([left + pw + 10, top + 10 + 16 * j, left + pw + 30, top + 10 + 16 * j], fill=col, width=3)
    d.text((left + pw + 34, top + 4 + 16 * j), name, fill=(0, 0, 0), font=font)
  with fileio.atomic_file(path, '.png') as tmp:
    img.save(tmp, format='PNG')
  return path


# ----------------------------------------------------------------------------------------- reading


def read_image(path: str) -> np.ndarray:
  try:
    with Image.open(path) as im:
      return np.asarray(im.convert('RGB'))
  except Exception as e:  # PIL raises several types for broken files
    raise MediaError(f'cannot read image {path}: {e}') from e


def count_and_size(path: str) -> tuple[int | None, tuple[int, int]]:
  """(number of frames or None for a still image, (H, W)) without decoding the whole input."""
  if os.path.isdir(path):
    files = image_files(path)
    return len(files), read_image(files[0]).shape[:2]
  ext = os.path.splitext(path)[1].lower()
  if ext in IMAGE_EXTENSIONS:
    return None, read_image(path).shape[:2]
  import imageio.v2 as imageio  # pylint: disable=g-import-not-at-top
  try:
    reader = imageio.get_reader(path)
    first = reader.get_data(0)
    n = reader.count_frames() if hasattr(reader, 'count_frames') else len(reader)
    reader.close()
  except Exception as e:
    raise MediaError(f'cannot read video {path}: {_reason(e)}. Give an mp4/avi/mov/webm/gif file readable by '
                     'imageio-ffmpeg, an image folder, or one image') from e
  return int(n), first.shape[:2]


def _reason(e: Exception) -> str:
  """ffmpeg's errors carry its whole banner (version, build flags, stream dump): keep the diagnosis, its
  last line (e.g. 'Invalid data found when processing input')."""
  lines = [l.strip() for l in str(e).splitlines() if l.strip()]
  if not lines:
    return type(e).__name__
  last = lines[-1]
  return last if len(lines) == 1 else f'{last} (ffmpeg)'


def image_files(folder: str) -> list[str]:
  files = sorted(f for f in os.listdir(folder) if os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS)
  if not files:
    raise MediaError(f'{folder} contains no image files ({", ".join(IMAGE_EXTENSIONS)})')
  return [os.path.join(folder, f) for f in files]


def read_frames(path: str, frame_indices: Sequence[int]) -> np.ndarray:
  """Selected frames of a video file / image folder, or a still image repeated: uint8 [T, H, W, 3]."""
  if os.path.isdir(path):
    files = image_files(path)
    return np.stack([read_image(files[i]) for i in frame_indices])
  ext = os.path.splitext(path)[1].lower()
  if ext in IMAGE_EXTENSIONS:
    img = read_image(path)
    return np.stack([img] * len(frame_indices))
  import imageio.v2 as imageio  # pylint: disable=g-import-not-at-top
  wanted = {int(i) for i in frame_indices}
  got = {}
  try:
    reader = imageio.get_reader(path)
    for i, frame in enumerate(reader):
      if i in wanted:
        got[i] = np.asarray(frame)[..., :3]
      if len(got) == len(wanted):
        break
    reader.close()
  except Exception as e:
    raise MediaError(f'cannot read video {path}: {_reason(e)}') from e
  missing = sorted(wanted - set(got))
  if missing:
    raise MediaError(f'{path}: frames {missing[:5]}... not found (video has fewer frames)')
  return np.stack([got[int(i)] for i in frame_indices])
