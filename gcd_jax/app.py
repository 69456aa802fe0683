"""The interactive page (`gcd-jax app`): pick a video, move the camera, see the generated view.

The reference ships a Gradio demo (gcd-model/scripts/gradio_app.py in the official code) with Kubric-4D and
ParallelDomain-4D example clips. This page does the same on the project's own engine: every request is one
`GCDPipeline` call (gcd_jax/pipeline.py, the code of `gcd-jax sample`), so what the page shows is what the
command line writes. The examples are held-out procedural scenes the project renders itself
(gcd_jax/geometry/procedural.py; the demo model never trained on them).

  app = build_app(GCDPipeline.from_pretrained('demo'), out_dir='/tmp/gcd_app')
  app.launch(**launch_options(app_out_dir))

Safety: requests run one at a time (the queue holds the others, it does not drop them); uploads are checked
before the model runs (readable video, long enough, under the size caps) and a bad one gets a one-line
message in the page; the server binds to 127.0.0.1 unless told otherwise and serves only files under its
output folder (Gradio's cache included).
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time

import numpy as np

# Bundled examples: held-out (test-split) scenes of the demo dataset, procedural_4d/demo (scenes 290-299).
EXAMPLE_SCENES = (291, 294, 297)
DISPLAY_HEIGHT = 192  # px: tiny models' frames are upscaled (nearest) to about this height for the page


@dataclasses.dataclass(frozen=True)
class AppSettings:
  """Limits and defaults of the page."""
  max_upload_mb: float = 100.0      # larger files are refused in the page (and by Gradio's own cap)
  max_side: int = 4096              # px: larger frames are refused
  max_samples: int = 4
  default_samples: int = 2
  queue_size: int = 16              # waiting requests beyond this are told to retry


class AppError(ValueError):
  """A request the page refuses, with a message for the user."""


# --------------------------------------------------------------------------------------------- examples
def example_clips(out_dir: str, num_frames: int, frame_stride: int = 2, height: int = 64) -> list[str]:
  """Renders the bundled example clips (view 0 of held-out procedural scenes) as mp4s in out_dir/examples,
  long enough for `num_frames` model frames at `frame_stride`. Reused when already there."""
  from gcd_jax.evaluate import media  # pylint: disable=g-import-not-at-top
  from gcd_jax.geometry import procedural  # pylint: disable=g-import-not-at-top
  frames = max(12, (num_frames - 1) * frame_stride + 1)
  preset = 'tiny' if height <= 64 else 'small'
  cfg = procedural.scene_config(preset, num_frames=frames)
  folder = os.path.join(out_dir, 'examples')
  os.makedirs(folder, exist_ok=True)
  paths = []
  for idx in EXAMPLE_SCENES:
    path = os.path.join(folder, f'scene_{idx:03d}_{cfg.height}x{cfg.width}_{frames}f.mp4')
    if not os.path.exists(path):
      scene = procedural.generate_scene(idx, cfg)  # the dataset's seed for scene idx (data seed 0)
      video = np.stack([scene.render(0, f)[0] for f in range(frames)])
      media.write_mp4(path, video, cfg.fps)  # atomic: a present file is complete
    paths.append(path)
  return paths


# ----------------------------------------------------------------------------------------------- checks
def check_upload(path: str | None, settings: AppSettings) -> None:
  """Refuses what cannot be a usable input before anything heavy runs: no file, too large, unreadable."""
  from gcd_jax.evaluate import media  # pylint: disable=g-import-not-at-top
  if not path:
    raise AppError('no input video: upload a video or pick one of the examples below it')
  size_mb = os.path.getsize(path) / 2 ** 20
  if size_mb > settings.max_upload_mb:
    raise AppError(f'the video is {size_mb:.0f} MB, more than this page accepts ({settings.max_upload_mb:.0f} MB); '
                   'trim or downscale it (or run `gcd-jax sample`, which has no cap)')
  try:
    count, (h, w) = media.count_and_size(path)
  except media.MediaError as e:
    raise AppError(f'{os.path.basename(path)} is not a readable video ({str(e).split(": ", 1)[-1]}); '
                   'upload an mp4, webm, mov or gif') from None
  if count is None:
    raise AppError(f'{os.path.basename(path)} is a still image; upload a video')
  if max(h, w) > settings.max_side:
    raise AppError(f'frames of {w}×{h} px are larger than this page accepts ({settings.max_side} px a side); '
                   'downscale the video')


# -------------------------------------------------------------------------------------------- rendering
def display_video(input01: np.ndarray, samples01: np.ndarray) -> np.ndarray:
  """uint8 [T, H, W, 3]: input | sample 1 | … upscaled (nearest) to about DISPLAY_HEIGHT, captioned."""
  from gcd_jax.evaluate import media  # pylint: disable=g-import-not-at-top
  scale = max(1, DISPLAY_HEIGHT // input01.shape[1])
  up = lambda v: np.repeat(np.repeat(media.to_uint8(v), scale, axis=-3), scale, axis=-2)  # noqa: E731
  panels = [('input', up(input01))] + [(f'generated {k + 1}', up(s)) for k, s in enumerate(samples01)]
  return np.stack([np.concatenate([media.label(p[i], text, bar=18) for text, p in panels], axis=1)
                   for i in range(input01.shape[0])])


class Generator:
  """The page's request handler: one pipeline, requests numbered, outputs under out_dir/requests/N."""

  def __init__(self, pipe, out_dir: str, settings: AppSettings = AppSettings()):
    self.pipe = pipe
    self.out_dir = os.path.abspath(out_dir)
    self.settings = settings
    self._count = 0
    self._lock = threading.Lock()  # the queue already serialises requests; this guards direct callers

  def camera_limits(self) -> dict:
    """{'azimuth': (lo, hi), ...}: the checkpoint's trained Δ ranges (its trajectory preset)."""
    t = self.pipe.trajectory_config('gradual')
    return dict(azimuth=tuple(t.delta_azimuth_range), elevation=tuple(t.delta_elevation_range),
                radius=tuple(t.delta_radius_range))

  def __call__(self, video: str | None, azimuth: float, elevation: float, radius: float, trajectory: str,
               num_samples: int, seed: int, frame_stride: int = 2, steps: int = 25, progress=None) -> dict:
    """→ {'video': display mp4, 'trajectory': png, 'info': dict, 'folder': the request's output folder}."""
    from gcd_jax.evaluate import inference, media  # pylint: disable=g-import-not-at-top
    from gcd_jax.pipeline import InputSettings, SamplerSettings  # pylint: disable=g-import-not-at-top
    report = progress or (lambda *a, **k: None)
    check_upload(video, self.settings)
    num_samples, seed, frame_stride, steps = int(num_samples), int(seed), int(frame_stride), int(steps)
    if not 1 <= num_samples <= self.settings.max_samples:
      raise AppError(f'number of samples {num_samples}: choose 1 to {self.settings.max_samples}')
    with self._lock:
      self._count += 1
      folder = os.path.join(self.out_dir, 'requests', f'{self._count:05d}')
      first = not self.pipe._generators  # pylint: disable=protected-access
      report(0.02, desc='compiling the sampler (first request; cached on disk for later runs)' if first
             else 'sampling')
      t0 = time.perf_counter()
      settings = SamplerSettings(steps=steps)
      try:
        out = self.pipe(video, azimuth, elevation, radius, trajectory=trajectory, num_samples=num_samples,
                        seed=seed, settings=settings, inputs=InputSettings(frame_stride=frame_stride))
      except (inference.InputError, media.MediaError) as e:
        raise AppError(str(e)) from None
      seconds = time.perf_counter() - t0
      report(0.95, desc='writing the videos')
      info = {'input': os.path.basename(video), 'delta': [azimuth, elevation, radius], 'trajectory': trajectory,
              'num_samples': num_samples, 'seed': seed, 'frame_stride': frame_stride, 'steps': steps,
              'clip_frames': out.clip_frames, 'motion_bucket_id': out.motion_bucket_id,
              'seconds': round(seconds, 2), 'warnings': out.warnings,
              'checkpoint': os.path.abspath(self.pipe.checkpoint)}
      files = inference.save_outputs(folder, out.input, out.videos, frame_rate=settings.frame_rate,
                                     spherical_dst=out.spherical_dst, info=info)
      shown = media.write_mp4(os.path.join(folder, 'display.mp4'), display_video(out.input, out.videos),
                              (6 + settings.frame_rate) // 2)
    return {'video': shown, 'trajectory': files['trajectory'], 'info': info, 'folder': folder}


def summary(info: dict) -> str:
  az, el, r = info['delta']
  lines = [f"camera move Δazimuth {az:+.0f}°, Δelevation {el:+.0f}°, Δradius {r:+.1f} m ({info['trajectory']}), "
           f"{info['num_samples']} sample(s), seed {info['seed']}: {info['seconds']:.1f} s "
           f"(frames {info['clip_frames']} of the input, motion bucket {info['motion_bucket_id']})"]
  lines += [f'warning: {w}' for w in info['warnings']]
  return '\n\n'.join(lines)


# --------------------------------------------------------------------------------------------------- page
def build_app(pipe, out_dir: str, settings: AppSettings = AppSettings()):
  """The Gradio Blocks page for one pipeline (not launched)."""
  import gradio as gr  # pylint: disable=g-import-not-at-top
  gen = Generator(pipe, out_dir, settings)
  limits = gen.camera_limits()
  width, height = pipe.frame_size
  examples = example_clips(out_dir, pipe.num_frames, 2, height)

  def run(video, azimuth, elevation, radius, trajectory, num_samples, seed, frame_stride, steps,
          progress=gr.Progress(track_tqdm=True)):
    try:
      out = gen(video, azimuth, elevation, radius, trajectory, num_samples, seed, frame_stride, steps,
                progress=progress)
    except AppError as e:
      raise gr.Error(str(e), print_exception=False) from None
    return out['video'], out['trajectory'], summary(out['info'])

  def slider(name, unit, step, default):
    lo, hi = limits[name]
    return gr.Slider(lo, hi, value=min(max(default, lo), hi), step=step, label=f'Δ{name} ({unit})',
                     info=f'trained range {lo:g} to {hi:g}', elem_id=name)

  with gr.Blocks(title='GCD: Generative Camera Dolly (gcd-jax)', analytics_enabled=False) as page:
    gr.Markdown(
        '## Generative Camera Dolly (gcd-jax)\n'
        f'Pick a video, choose how the camera moves, press **Generate**: the model re-renders the dynamic scene '
        f'from the new camera. Model: `{os.path.basename(os.path.normpath(pipe.checkpoint))}` '
        f'({pipe.num_frames} frames at {width}×{height}, trained camera range '
        f"Δazimuth {limits['azimuth'][0]:g}…{limits['azimuth'][1]:g}°, "
        f"Δelevation {limits['elevation'][0]:g}…{limits['elevation'][1]:g}°, "
        f"Δradius {limits['radius'][0]:g}…{limits['radius'][1]:g} m).")
    with gr.Row():
      with gr.Column(scale=1):
        video = gr.Video(label='input video', sources=['upload'], elem_id='input_video', height=240)
        gr.Examples(examples=[[p] for p in examples], inputs=[video], label='held-out procedural scenes')
      with gr.Column(scale=1):
        azimuth = slider('azimuth', '°', 1, 60)
        elevation = slider('elevation', '°', 1, 10)
        radius = slider('radius', 'm', 0.1, 0)
        trajectory = gr.Radio(['gradual', 'direct'], value='gradual', label='trajectory',
                              info='gradual: the camera moves over the clip; direct: every frame at the target',
                              elem_id='trajectory')
        with gr.Row():
          num_samples = gr.Slider(1, settings.max_samples, value=min(settings.default_samples, settings.max_samples),
                                  step=1, label='samples', elem_id='num_samples')
          seed = gr.Number(value=0, precision=0, label='seed', elem_id='seed')
        with gr.Accordion('advanced', open=False):
          frame_stride = gr.Slider(1, 4, value=2, step=1, label='frame stride (use every Nth input frame)',
                                   elem_id='frame_stride')
          steps = gr.Slider(2, 50, value=25, step=1, label='sampler steps', elem_id='steps')
        button = gr.Button('Generate', variant='primary', elem_id='generate')
    with gr.Row():
      result = gr.Video(label='input | generated', elem_id='result', interactive=False, autoplay=True, loop=True)
      camera = gr.Image(label='camera trajectory (top and side views)', elem_id='camera', interactive=False, type='filepath')
    status = gr.Markdown(elem_id='status')
    button.click(run, [video, azimuth, elevation, radius, trajectory, num_samples, seed, frame_stride, steps],
                 [result, camera, status], concurrency_limit=1, concurrency_id='sampler')
  page.queue(max_size=settings.queue_size, default_concurrency_limit=1)
  return page


def launch_options(out_dir: str, *, host: str = '127.0.0.1', port: int = 7860,
                   settings: AppSettings = AppSettings()) -> dict:
  """`Blocks.launch` arguments: local host by default, nothing served outside out_dir, no network calls."""
  import gradio as gr  # pylint: disable=g-import-not-at-top
  font = ['ui-sans-serif', 'system-ui', 'sans-serif']  # the default theme would fetch Google fonts
  return dict(server_name=host, server_port=port, allowed_paths=[os.path.abspath(out_dir)], share=False,
              max_file_size=f'{int(settings.max_upload_mb)}mb', ssr_mode=False, show_error=True,
              theme=gr.themes.Default(font=font, font_mono=['ui-monospace', 'monospace']), quiet=True)


def gradio_environment(out_dir: str) -> None:
  """Before gradio is imported: its file cache inside out_dir (so everything served is the app's own
  output), no analytics or version checks (no network calls)."""
  os.environ['GRADIO_TEMP_DIR'] = os.path.join(os.path.abspath(out_dir), 'gradio')
  os.environ['GRADIO_ANALYTICS_ENABLED'] = 'False'
  os.environ.setdefault('GRADIO_TELEMETRY_ENABLED', 'False')
  os.environ.setdefault('HF_HUB_DISABLE_TELEMETRY', '1')


