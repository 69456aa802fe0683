r"""`gcd-jax app`: the interactive page — pick a video, move the camera, see the generated view (Gradio).

  gcd-jax app                                   # the packaged demo model, http://127.0.0.1:7860
  gcd-jax app --checkpoint ckpt/gcd_kubric --port 8000
  gcd-jax app --checkpoint W --step 5000        # a training workdir

Upload a video or pick a bundled example (held-out procedural scenes), set Δazimuth / Δelevation / Δradius
(sliders limited to the checkpoint's trained range), gradual or direct trajectory, samples and seed, press
Generate. Every request runs the engine of `gcd-jax sample` (gcd_jax/pipeline.py); its files (input.mp4,
sample_k.mp4, side_by_side.mp4, trajectory.png, info.json) stay in OUT/requests/N. Requests run one at a time,
the others wait in the queue. The page binds to 127.0.0.1 (use --host 0.0.0.0 to expose it, at your own risk)
and serves nothing but its own outputs. Needs the `app` extra: pip install "gcd-jax[app]".
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument('--checkpoint', default='demo',
                      help="model folder, training workdir or Hub repo (default: 'demo', the packaged demo model)")
  from gcd_jax.train.workdir import add_step_arguments  # pylint: disable=g-import-not-at-top
  add_step_arguments(parser, 'serve')
  parser.add_argument('--host', default='127.0.0.1', help='address to bind (0.0.0.0 exposes the page to the network)')
  parser.add_argument('--port', type=int, default=7860, help='port (0: any free port)')
  parser.add_argument('--out', default='',
                      help='folder for the examples, the generated videos and Gradio\'s cache '
                           '(default: a new folder under the system temp dir)')
  parser.add_argument('--max-upload-mb', type=float, default=100.0, help='largest accepted upload')
  parser.add_argument('--max-samples', type=int, default=4, help='largest number of samples per request')


def _bindable_port(host: str, port: int) -> int:
  """The port to serve on (a free one for 0), checked before anything is loaded or written."""
  import socket  # pylint: disable=g-import-not-at-top
  from gcd_jax.cli import UsageError  # pylint: disable=g-import-not-at-top
  try:
    with socket.socket() as s:
      s.bind((host, port))
      return s.getsockname()[1]
  except OSError as e:
    raise UsageError(f'cannot serve on {host}:{port} ({e.strerror or e}); choose another --port, or 0 for a '
                     'free one') from None


def run(args: argparse.Namespace) -> int:
  from gcd_jax.cli import UsageError  # pylint: disable=g-import-not-at-top
  if not 0 <= args.port <= 65535:
    raise UsageError(f'--port {args.port}: choose 1-65535, or 0 for any free port')
  if args.max_upload_mb <= 0:
    raise UsageError(f'--max-upload-mb {args.max_upload_mb:g}: must be > 0 (megabytes per upload)')
  if args.max_samples < 1:
    raise UsageError(f'--max-samples {args.max_samples}: must be ≥ 1 (samples per request)')
  try:
    import gradio  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    raise UsageError('the page needs Gradio, which is not installed: pip install "gcd-jax[app]" '
                     '(or pip install -r requirements-app.txt)') from None
  port = _bindable_port(args.host, args.port)
  out = os.path.abspath(args.out) if args.out else tempfile.mkdtemp(prefix='gcd_jax_app_')
  if os.path.exists(out) and not os.path.isdir(out):
    raise UsageError(f'--out {out} is a file; choose a folder')
  os.makedirs(out, exist_ok=True)
  from gcd_jax import app  # pylint: disable=g-import-not-at-top
  app.gradio_environment(out)
  from gcd_jax.pipeline import GCDPipeline  # pylint: disable=g-import-not-at-top
  warn = lambda m: print(f'gcd-jax app: warning: {m}', file=sys.stderr, flush=True)  # noqa: E731
  pipe = GCDPipeline.from_pretrained(args.checkpoint, step=args.step, weights=args.weights, warn=warn)
  settings = app.AppSettings(max_upload_mb=args.max_upload_mb, max_samples=args.max_samples,
                             default_samples=min(2, args.max_samples))
  page = app.build_app(pipe, out, settings)
  print(f'gcd-jax app: model {pipe.checkpoint}; outputs in {out}', flush=True)
  try:
    _, url, _ = page.launch(prevent_thread_lock=True, **app.launch_options(out, host=args.host, port=port,
                                                                           settings=settings))
  except OSError:
    raise UsageError(f'cannot serve on {args.host}:{port}: the port was taken meanwhile; choose another --port, '
                     'or 0 for a free one') from None
  print(f'gcd-jax app: serving on {url} (Ctrl-C stops)', flush=True)
  try:
    page.block_thread()
  finally:
    page.close()
  return 0
