"""`gcd-jax data build NAME` / `gcd-jax data show NAME`: build TFDS datasets, preview training examples.

  gcd-jax data build procedural_4d --data-dir ~/tensorflow_datasets --config tiny
  gcd-jax data build kubric_4d --manual-dir /data/kubric4d --config full [--point-clouds /data/kubric4d_pcl]
  gcd-jax data show procedural_4d --config tiny --out preview.png   (or .mp4)
"""

from __future__ import annotations

import argparse
import contextlib
import os

import numpy as np


def add_arguments(parser: argparse.ArgumentParser):
  sub = parser.add_subparsers(dest='action', metavar='ACTION', required=True)
  b = sub.add_parser('build', help='Build a TFDS (ArrayRecord) dataset: procedural_4d, kubric_4d, pardom_4d.')
  s = sub.add_parser('show', help='Render training examples and write a PNG grid / mp4 with the trajectory.')
  for p in (b, s):
    p.add_argument('name', choices=['procedural_4d', 'kubric_4d', 'pardom_4d'], help='dataset')
    p.add_argument('--data-dir', default=os.path.expanduser('~/tensorflow_datasets'),
                   help='TFDS data_dir (default ~/tensorflow_datasets).')
    p.add_argument('--config', default='tiny',
                   help='builder config: procedural_4d tiny / demo / demo_eval / small / full; kubric_4d, '
                        'pardom_4d full / tiny')
    p.add_argument('--manual-dir', default=None,
                   help='Kubric-4D / PD raw layout (required for those), procedural scene cache (optional).')
  b.add_argument('--no-progress', action='store_true', help='no progress bars')
  b.add_argument('--num-scenes', type=int, default=None, help='procedural_4d: override the config scene count.')
  b.add_argument('--point-clouds', default=None,
                 help='Also write merged per-frame point clouds (.npz, docs/reference.md §4.4) of every scene here.')
  s.add_argument('--out', required=True,
                 help='Output .png (grid), .mp4 or .gif (video); a .png grid is also written beside a video.')
  s.add_argument('--preset', default=None, help='Data preset string (default: tiny for config tiny, else procedural).')
  s.add_argument('--split', default='train', help='split to show examples of')
  s.add_argument('--index', type=int, default=0, help='first example (scene index in the split) to show')
  s.add_argument('--num-examples', type=int, default=1, help='examples (scenes) to show, from --index on')
  s.add_argument('--seed', type=int, default=0, help='seed of the sampled cameras and clips')


class DataArgumentError(ValueError):
  """A dataset name, config, folder or index that cannot be used (usage error)."""


def check_build_arguments(args) -> None:
  """Everything about the request that can be checked before TFDS creates a single folder."""
  from data_pipelines import tfds_builders  # pylint: disable=g-import-not-at-top
  configs = [c.name for c in tfds_builders.NAMES[args.name].BUILDER_CONFIGS]
  if args.config not in configs:
    raise DataArgumentError(f'{args.name} has no config {args.config!r}; choose one of {", ".join(configs)}')
  if args.num_scenes is not None and args.num_scenes < 1:
    raise DataArgumentError(f'--num-scenes {args.num_scenes} must be ≥ 1')
  manual = args.manual_dir
  if args.name == 'procedural_4d':
    if manual and not os.path.isdir(os.path.dirname(os.path.abspath(manual))):
      raise DataArgumentError(f'--manual-dir {manual}: its parent folder does not exist (it is the procedural '
                              'scene cache; give a path in an existing folder, or leave it out)')
    return
  if not manual:
    raise DataArgumentError(f'{args.name} is built from a downloaded copy: pass --manual-dir with its folder '
                            "(the README's Data section gives the layout)")
  if not os.path.isdir(manual):
    raise DataArgumentError(f'--manual-dir {manual} is not a folder; give the folder holding the downloaded '
                            f'{args.name} scenes')
  if not any(not n.startswith('.') for n in os.listdir(manual)):
    raise DataArgumentError(f'--manual-dir {manual} is empty; give the folder holding the downloaded '
                            f'{args.name} scenes')


def run(args) -> int:
  from data_pipelines import tfds_builders  # pylint: disable=g-import-not-at-top
  if args.action == 'build':
    check_build_arguments(args)
    if args.no_progress:
      import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
      tfds.disable_progress_bar()
    kwargs = {'num_scenes': args.num_scenes} if args.name == 'procedural_4d' and args.num_scenes else {}
    with _removed_on_failure(args.data_dir):
      builder = tfds_builders.build(args.name, data_dir=args.data_dir, config=args.config,
                                    manual_dir=args.manual_dir, **kwargs)
    for split, scenes in builder.info.metadata['scenes'].items():
      print(f'{args.name}/{args.config} {split}: {len(scenes)} scenes, {sum(len(f) for _, _, f in scenes)} frames')
    print(f'written to {builder.data_dir}')
    if args.point_clouds:
      _write_point_clouds(builder, args)
    return 0
  return _show(args)


@contextlib.contextmanager
def _removed_on_failure(data_dir: str, depth: int = 4):
  """A failed or interrupted build leaves nothing behind: every file or folder that appeared under data_dir
  (to `depth` levels: TFDS's downloads/, NAME/.config/, NAME/CONFIG/incomplete.*) is removed again."""
  import shutil  # pylint: disable=g-import-not-at-top

  def listing(root):
    out = set()
    for d, dirs, files in os.walk(root):
      level = os.path.relpath(d, root).count(os.sep) + (0 if d == root else 1)
      out.update(os.path.join(d, n) for n in dirs + files)
      if level >= depth:
        dirs[:] = []
    return out

  root = os.path.abspath(data_dir)
  existed = os.path.isdir(root)
  before = listing(root) if existed else set()
  try:
    yield
  except BaseException:
    if not existed:
      shutil.rmtree(root, ignore_errors=True)
    else:
      for path in sorted(listing(root) - before, key=len):
        if os.path.isdir(path) and not os.path.islink(path):
          shutil.rmtree(path, ignore_errors=True)
        elif os.path.lexists(path):
          os.remove(path)
    raise


def _write_point_clouds(builder, args):
  from data_pipelines import kubric4d, pardom4d, pointcloud_store  # pylint: disable=g-import-not-at-top
  # procedural_4d caches its Kubric-layout scenes under <data_dir>/downloads/procedural_4d/<config> by default.
  root = args.manual_dir or os.path.join(args.data_dir, 'downloads', 'procedural_4d', args.config)
  for split, scenes in builder.info.metadata['scenes'].items():
    for _, name, _ in scenes:
      scene = (pardom4d.PardomScene(root, name) if args.name == 'pardom_4d' else kubric4d.KubricScene(root, name))
      pointcloud_store.build_scene_store(scene, args.point_clouds)
    print(f'point clouds of {split} written under {args.point_clouds}')


def _show(args) -> int:
  from data_pipelines import input_pipeline  # pylint: disable=g-import-not-at-top
  preset = args.preset or ('tiny' if args.config == 'tiny' else 'procedural')
  cfg = input_pipeline.data_config(preset)
  cfg.dataset, cfg.builder_config, cfg.data_dir, cfg.split = args.name, args.config, args.data_dir, args.split
  cfg.manual_dir = args.manual_dir or ''
  cfg.seed, cfg.shard_index, cfg.shard_count = args.seed, 0, 1
  if args.name == 'pardom_4d':
    cfg.trajectory = 'pardom_gradual'
  if not args.out.endswith(('.png', '.mp4', '.gif')):
    raise DataArgumentError(f'--out {args.out}: give a .png (grid), .mp4 or .gif (video) file name')
  source = input_pipeline.make_source(cfg)
  if not 0 <= args.index or args.index + args.num_examples > len(source):
    raise DataArgumentError(f'--index {args.index} --num-examples {args.num_examples}: {args.name}/{args.config} '
                            f'{args.split} has {len(source)} scenes (indices 0–{len(source) - 1})')
  maker = input_pipeline.ExampleMaker(cfg, source)
  examples = [maker(args.index + k) for k in range(args.num_examples)]
  grid = np.concatenate([preview_grid(ex) for ex in examples], 0)
  out = args.out
  os.makedirs(os.path.dirname(os.path.abspath(out)) or '.', exist_ok=True)
  from gcd_jax.evaluate import media  # pylint: disable=g-import-not-at-top
  png = out if out.endswith('.png') else os.path.splitext(out)[0] + '.png'
  media.write_png(png, grid)
  print(f'wrote {png}')
  if out.endswith(('.mp4', '.gif')):
    frames = np.concatenate([preview_frames(ex) for ex in examples], 0)
    (media.write_mp4 if out.endswith('.mp4') else media.write_gif)(out, frames, fps=4)
    print(f'wrote {out}')
  return 0


def _to_uint8(x):
  return np.clip((np.asarray(x) + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)


def trajectory_plot(example, size: int) -> np.ndarray:
  """Top-down (x right, y up) plot of source (blue) and target (red → orange over time) camera positions
  and viewing directions, with the orbit centre (0, 0) as a cross. → [size, size, 3] uint8."""
  from PIL import Image, ImageDraw  # pylint: disable=g-import-not-at-top
  src = np.asarray(example['src_camera'])
  dst = np.asarray(example['dst_camera'])
  pts = np.concatenate([src[:, :2, 3], dst[:, :2, 3], np.zeros((1, 2))])
  extent = np.abs(pts).max() * 1.25 + 1e-6
  img = Image.new('RGB', (size, size), (255, 255, 255))
  d = ImageDraw.Draw(img)

  def px(p):
    return (size / 2 + p[0] / extent * size / 2, size / 2 - p[1] / extent * size / 2)

  c = px((0, 0))
  d.line([c[0] - 4, c[1], c[0] + 4, c[1]], fill=(0, 0, 0))
  d.line([c[0], c[1] - 4, c[0], c[1] + 4], fill=(0, 0, 0))
  t = len(dst)
  d.line([px(p) for p in dst[:, :2, 3]], fill=(240, 120, 0), width=1)
  for i, cams in enumerate((dst, src[:1])):  # source last: a gradual target starts on top of it
    for k, cam in enumerate(cams):
      color = (30, 60, 230) if i == 1 else (230, int(40 + 160 * k / max(t - 1, 1)), 0)
      p = cam[:2, 3]
      f = cam[:2, 2] / (np.linalg.norm(cam[:2, 2]) + 1e-9) * extent * 0.12
      q0, q1 = px(p), px(p + f)
      d.line([q0, q1], fill=color, width=2)
      d.ellipse([q0[0] - 2, q0[1] - 2, q0[0] + 2, q0[1] + 2], fill=color)
  return np.asarray(img)


def preview_grid(example) -> np.ndarray:
  """Rows: input (cond_frames_without_noise), target (jpg); last column: trajectory plot. uint8."""
  src, dst = _to_uint8(example['cond_frames_without_noise']), _to_uint8(example['jpg'])
  h = src.shape[1]
  rows = np.concatenate([np.concatenate(list(src), 1), np.concatenate(list(dst), 1)], 0)
  plot = trajectory_plot(example, 2 * h)
  return np.concatenate([rows, plot], 1)


def preview_frames(example) -> np.ndarray:
  """Video frames [T, 2H, W + 2H, 3]: input above target, trajectory plot at the right."""
  src, dst = _to_uint8(example['cond_frames_without_noise']), _to_uint8(example['jpg'])
  h = src.shape[1]
  plot = trajectory_plot(example, 2 * h)
  return np.stack([np.concatenate([np.concatenate([s, d], 0), plot], 1) for s, d in zip(src, dst)])
