r"""Batch sampling evaluation over a test split (docs/reference.md §5), resumable, sharded, with reports.

  gcd-jax evaluate --config configs/gcd.py:data=kubric --checkpoint ckpt/ --split test \
      --list eval/list/kubric_test20.txt --controls eval/list/kubric_valtest_controls_gradual.json \
      --num-samples 2 --steps 25 --seed 0 --out runs/eval_kubric

What happens (the reference's `scripts/test.py`, plus what it leaves out):
1. Scenes: `--list` (the reference's eval/list txt format; basenames decide) or the whole split. Host h of
   H takes scenes h, h+H, ... (no cross-host traffic: each host samples on its local devices).
2. Controls: `--controls` (Kubric `{scn: {sample_XX: {spherical_start, spherical_end, frame_start,
   frame_skip}}}` or PD `{scene: {sample_XX: {frame_start, frame_skip, fps}}}`, §5.2) or, for datasets
   without one, `controls.generate_kubric_controls` seeded by --seed. The controls used are written to
   OUT/controls.json.
3. Per scene: input video (Kubric-like: render of the merged cloud at the source pose; PD: the real ego
   frames), ground truth (render along the target trajectory) and the single-view "reproject" render
   (source view only, blur kernel 3, §4.8 item 8) that defines the visible/occluded masks.
4. Sampling: `--num-samples` samples per scene with the jitted guided sampler, videos batched over the
   local devices. Noise is keyed by (seed, scene index, sample index) and the cond_aug noise by (seed,
   scene index), so results do not depend on batching, host count or resumption (§6 item 21: the
   reference does not seed; we do).
5. Metrics per sample and frame (metrics.py; LPIPS / mIoU on request) → OUT/scenes/<scene>/metrics.json,
   written atomically; a scene with that file is finished and skipped on a rerun (resumable).
6. Galleries OUT/scenes/<scene>/gallery.{mp4,gif}: input | sample 1..S | ground truth, and the videos
   themselves as uint8 arrays in OUT/scenes/<scene>/videos.npz (input, samples, gt, reproject).
7. Process 0 aggregates every finished scene: OUT/results.md, OUT/results.csv (mean ± std over scenes ×
   samples of each video's frame-mean; diversity over scenes), OUT/curves_{psnr,ssim}.png (per frame).

Aggregation (not coded in the reference, §5.3/§6 item 23): per video (scene × sample) the nanmean over
frames, then mean ± std (ddof 0) over all videos; NaN videos (e.g. nothing occluded) are left out and the
count n says how many remain. mIoU additionally reports the dataset-level value from summed counts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from typing import Callable, Sequence

import numpy as np

from gcd_jax import fileio
from gcd_jax.evaluate import controls as controls_lib
from gcd_jax.evaluate import media

FRAME_METRICS = ('psnr', 'ssim', 'psnr_vis', 'ssim_vis', 'psnr_occ', 'ssim_occ', 'lpips', 'miou')
# Baselines scored against the same ground truth, one "sample" per scene (docs/evaluation.md):
#   copy      the input video itself (what a model that ignores the camera would output);
#   meanframe the per-pixel temporal mean of the input video, at every frame;
#   reproject the input view's points rendered at the target camera (docs/reference.md §4.8 item 8's test-time
#             "reproject" video): geometry from the GT depth, so an upper reference, not a competitor.
BASELINES = ('copy', 'meanframe', 'reproject')
BASELINE_METRICS = tuple(f'{m}_{b}' for b in BASELINES for m in ('psnr', 'ssim'))
# With several samples per scene: the per-pixel mean of the scene's samples, scored as one video. It estimates
# the model's posterior mean, the best guess under squared error, which one sample is not: even an exact
# model's sample has twice the posterior mean's expected squared error (docs/evaluation.md). A diagnostic of
# what the model knows, reported beside the samples, never instead of them.
SAMPLE_MEAN_METRICS = ('psnr_samplemean', 'ssim_samplemean')
SCENE_METRICS = ('diversity', 'diversity_vis', 'diversity_occ', 'occluded_fraction')
RESULTS_VERSION = 1


class EvaluationError(ValueError):
  """Bad evaluation inputs (settings, lists, controls, out folder)."""


# ------------------------------------------------------------------------------------------ settings


@dataclasses.dataclass
class EvalSettings:
  """Everything that determines the numbers; stored in OUT/run.json (a rerun must match it)."""
  checkpoint: str
  config: str = ''
  split: str = 'test'
  list_file: str = ''
  controls_file: str = ''
  control_idx: int = 0
  num_samples: int = 2
  steps: int = 25
  seed: int = 0
  guidance_min: float = 1.0
  guidance_max: float = 1.5
  cond_aug: float = 0.02
  decoding_t: int = 14
  lpips: str = 'none'
  semantic_palette: str = ''

  def digest(self) -> str:
    return hashlib.sha256(json.dumps(dataclasses.asdict(self), sort_keys=True).encode()).hexdigest()[:16]


def _jsonable(x):
  """numpy → JSON (NaN/inf → None: JSON has no NaN)."""
  if isinstance(x, dict):
    return {k: _jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  if isinstance(x, np.ndarray):
    return _jsonable(x.tolist())
  if isinstance(x, (np.floating, float)):
    x = float(x)
    return x if math.isfinite(x) else None
  if isinstance(x, np.integer):
    return int(x)
  return x


def _nan(x):
  return np.asarray([np.nan if v is None else v for v in np.ravel(x)], np.float64).reshape(np.shape(x))


def check_run_folder(out_dir: str, settings: EvalSettings) -> None:
  """OUT/run.json pins the settings: a rerun into the same folder must not mix different numbers."""
  path = os.path.join(out_dir, 'run.json')
  if os.path.exists(path):
    with open(path) as f:
      old = json.load(f)
    if old.get('digest') != settings.digest():
      diff = {k: (old['settings'].get(k), v) for k, v in dataclasses.asdict(settings).items()
              if old['settings'].get(k) != v}
      raise EvaluationError(f'{out_dir} holds an evaluation with other settings {diff} (old, new); '
                            'use another --out, or the same settings to resume')
  else:
    fileio.write_json(path, {'version': RESULTS_VERSION, 'digest': settings.digest(),
                        'settings': dataclasses.asdict(settings)})


def scene_dir(out_dir: str, scene: str) -> str:
  return os.path.join(out_dir, 'scenes', scene)


def is_finished(out_dir: str, scene: str) -> bool:
  return os.path.exists(os.path.join(scene_dir(out_dir, scene), 'metrics.json'))


def host_scenes(scenes: Sequence[str], process_index: int, process_count: int) -> list[str]:
  """Host h of H evaluates scenes h, h+H, ... (disjoint, together all)."""
  return list(scenes[process_index::process_count])


# ------------------------------------------------------------------------------------------- seeds


def sample_seed(seed: int, scene_idx: int, sample_idx: int) -> np.ndarray:
  """uint32[2] key data for one (seed, scene, sample): independent of batching and hosts."""
  ss = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(scene_idx), int(sample_idx), 0x5A3])
  return ss.generate_state(2, np.uint32)


def cond_noise(seed: int, scene_idx: int, shape) -> np.ndarray:
  """The cond_aug pixel noise N(0, 1) of one scene (shared by its samples, as the reference's batch)."""
  rng = np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(scene_idx), 0xC0D]))
  return rng.standard_normal(shape, dtype=np.float32)


# ------------------------------------------------------------------------------------ scene metrics


def baseline_videos(input01: np.ndarray | None, reproject01: np.ndarray | None) -> dict:
  """{name: [T, H, W, 3]} of the BASELINES that can be formed from the example."""
  out = {}
  if input01 is not None:
    out['copy'] = np.asarray(input01, np.float32)
    out['meanframe'] = np.broadcast_to(out['copy'].mean(0, keepdims=True), out['copy'].shape)
  if reproject01 is not None:
    out['reproject'] = np.asarray(reproject01, np.float32)
  return out


def scene_metrics(samples01: np.ndarray, gt01: np.ndarray, reproject01: np.ndarray | None, *,
                  input01: np.ndarray | None = None, lpips_model=None, palette=None, ignore_index=None) -> dict:
  """samples01 [S, T, H, W, 3], gt01 / reproject01 / input01 [T, H, W, 3] → per-frame arrays (FRAME_METRICS,
  and BASELINE_METRICS [1, T] for the baselines that input01 / reproject01 allow; SAMPLE_MEAN_METRICS [1, T]
  when S > 1)."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from gcd_jax.evaluate import metrics  # pylint: disable=g-import-not-at-top
  out = metrics.video_metrics(jnp.asarray(samples01), jnp.asarray(gt01),
                              None if reproject01 is None else jnp.asarray(reproject01))
  for name, video in baseline_videos(input01, reproject01).items():
    base = metrics.video_metrics(jnp.asarray(video)[None], jnp.asarray(gt01))
    out[f'psnr_{name}'], out[f'ssim_{name}'] = np.asarray(base['psnr']), np.asarray(base['ssim'])
  s, t = samples01.shape[:2]
  if s > 1:
    mean = metrics.video_metrics(jnp.asarray(samples01, jnp.float32).mean(0, keepdims=True), jnp.asarray(gt01))
    out['psnr_samplemean'], out['ssim_samplemean'] = np.asarray(mean['psnr']), np.asarray(mean['ssim'])
  if lpips_model is not None:
    flat = samples01.reshape((s * t,) + samples01.shape[2:])
    ref = np.broadcast_to(gt01[None], samples01.shape).reshape(flat.shape)
    out['lpips'] = np.asarray(lpips_model(jnp.asarray(flat), jnp.asarray(ref), normalize=True)).reshape(s, t)
  if palette is not None:
    inter, union = metrics.semantic_iou_counts(jnp.asarray(samples01), jnp.asarray(gt01)[None],
                                               jnp.asarray(palette), ignore_index)
    inter, union = np.asarray(inter), np.asarray(union)             # [S, T, K]
    out['miou'] = np.asarray(metrics.miou_from_counts(inter, union))  # per frame [S, T]
    out['miou_video'] = np.asarray(metrics.miou_from_counts(inter.sum(1), union.sum(1)))  # [S]
    out['iou_intersection'] = inter.sum(1)  # [S, K] summed over frames
    out['iou_union'] = union.sum(1)
  return out


# --------------------------------------------------------------------------------------- aggregation


def _video_means(per_frame: np.ndarray) -> np.ndarray:
  """[S, T] → [S] nanmean over frames (NaN if all NaN), without warnings."""
  per_frame = np.asarray(per_frame, np.float64)
  ok = np.isfinite(per_frame)
  n = ok.sum(-1)
  return np.where(n > 0, np.where(ok, per_frame, 0).sum(-1) / np.maximum(n, 1), np.nan)


def _mean_std(values) -> tuple[float, float, int]:
  v = np.asarray(values, np.float64).ravel()
  v = v[np.isfinite(v)]
  if v.size == 0:
    return float('nan'), float('nan'), 0
  return float(v.mean()), float(v.std()), int(v.size)


def load_scene_videos(out_dir: str, scene: str) -> dict:
  """The videos of a finished scene as uint8 arrays: input, gt [T, H, W, 3], samples [S, T, H, W, 3]
  (+ reproject): OUT/scenes/<scene>/videos.npz."""
  with np.load(os.path.join(scene_dir(out_dir, scene), 'videos.npz')) as f:
    return {k: f[k] for k in f.files}


def load_scene_results(out_dir: str) -> list[dict]:
  root = os.path.join(out_dir, 'scenes')
  results = []
  if not os.path.isdir(root):
    return results
  for name in sorted(os.listdir(root)):
    path = os.path.join(root, name, 'metrics.json')
    if os.path.exists(path):
      with open(path) as f:
        results.append(json.load(f))
  return results


def aggregate(results: list[dict]) -> dict:
  """Scene results → {metric: {'mean', 'std', 'n', 'per_frame_mean', 'per_frame_std'}}."""
  table = {}
  for m in FRAME_METRICS + BASELINE_METRICS + SAMPLE_MEAN_METRICS:
    frames = [_nan(r['frame'][m]) for r in results if m in r.get('frame', {})]
    if not frames:
      continue
    videos = np.concatenate([_video_means(f) for f in frames])  # scenes × samples
    mean, std, n = _mean_std(videos)
    stacked = np.concatenate(frames, axis=0)  # [scenes·S, T]
    with np.errstate(all='ignore'):
      import warnings  # pylint: disable=g-import-not-at-top
      with warnings.catch_warnings():
        warnings.simplefilter('ignore', RuntimeWarning)
        pf_mean = np.nanmean(stacked, axis=0)
        pf_std = np.nanstd(stacked, axis=0)
    table[m] = {'mean': mean, 'std': std, 'n': n, 'per_frame_mean': pf_mean, 'per_frame_std': pf_std}
  # Frames 1..T−1 only: with gradual trajectories frame 0 is the input pose itself, where copying the input is
  # exact (infinite PSNR) and dominates the all-frame mean of the copy baseline (docs/evaluation.md).
  for m in ('psnr', 'ssim') + BASELINE_METRICS + SAMPLE_MEAN_METRICS:
    frames = [_nan(r['frame'][m])[:, 1:] for r in results if m in r.get('frame', {})]
    if frames and frames[0].shape[-1]:
      mean, std, n = _mean_std(np.concatenate([_video_means(f) for f in frames]))
      table[f'{m}_from1'] = {'mean': mean, 'std': std, 'n': n}
  for m in SCENE_METRICS:
    vals = [_video_means(_nan(r['scene_metrics'][m])[None])[0]
            for r in results if m in r.get('scene_metrics', {})]
    if vals:
      mean, std, n = _mean_std(vals)
      table[m] = {'mean': mean, 'std': std, 'n': n}
  miou_videos = [np.asarray(_nan(r['video']['miou'])) for r in results if 'miou' in r.get('video', {})]
  if miou_videos:
    mean, std, n = _mean_std(np.concatenate(miou_videos))
    table['miou_video'] = {'mean': mean, 'std': std, 'n': n}
    inter = np.sum([np.sum(r['iou_counts']['intersection'], axis=0) for r in results if 'iou_counts' in r], axis=0)
    union = np.sum([np.sum(r['iou_counts']['union'], axis=0) for r in results if 'iou_counts' in r], axis=0)
    present = union > 0
    table['miou_dataset'] = {'mean': float(np.mean(inter[present] / union[present])) if present.any() else
                             float('nan'), 'std': float('nan'), 'n': int(present.sum())}
  return table


UNITS = {'psnr': 'dB', 'psnr_vis': 'dB', 'psnr_occ': 'dB', 'psnr_samplemean': 'dB',
         **{f'psnr_{b}': 'dB' for b in BASELINES}}


def baseline_table(table: dict) -> list[str]:
  """Markdown rows: the model's PSNR / SSIM beside each baseline's and the model's PSNR margin over it, over
  all frames (the reference protocol) and over frames 1..T−1 (`*_from1`: frame 0 of a gradual trajectory is
  the input pose, where copying is exact). With several samples per scene, a row and a margin column for the
  per-pixel mean of each scene's samples (SAMPLE_MEAN_METRICS)."""
  if 'psnr' not in table:
    return []
  g = lambda k: table[k]['mean'] if k in table else float('nan')  # noqa: E731
  mean = 'psnr_samplemean' in table
  extra = (' sample mean − it, frames 1+ (dB) |', '---|', ' |') if mean else ('', '', '')
  rows = ['| video | PSNR all frames | SSIM all frames | PSNR frames 1+ | SSIM frames 1+ | '
          'model − it, frames 1+ (dB) |' + extra[0], '|---|---|---|---|---|---|' + extra[1],
          f'| **generated (model)** | {g("psnr"):.2f} | {g("ssim"):.3f} | {g("psnr_from1"):.2f} | '
          f'{g("ssim_from1"):.3f} | |' + extra[2]]
  if mean:
    rows.append(f"| per-pixel mean of each scene's samples (a point estimate, not a sample) | "
                f'{g("psnr_samplemean"):.2f} | {g("ssim_samplemean"):.3f} | {g("psnr_samplemean_from1"):.2f} | '
                f'{g("ssim_samplemean_from1"):.3f} | | |')
  names = {'copy': 'copy the input video', 'meanframe': 'mean frame of the input',
           'reproject': 'reprojection of the input view (upper reference: uses GT depth)'}
  for b in BASELINES:
    if f'psnr_{b}' in table:
      row = (f'| {names[b]} | {g(f"psnr_{b}"):.2f} | {g(f"ssim_{b}"):.3f} | {g(f"psnr_{b}_from1"):.2f} | '
             f'{g(f"ssim_{b}_from1"):.3f} | {g("psnr_from1") - g(f"psnr_{b}_from1"):+.2f} |')
      if mean:
        row += f' {g("psnr_samplemean_from1") - g(f"psnr_{b}_from1"):+.2f} |'
      rows.append(row)
  return rows


def write_reports(out_dir: str, results: list[dict], settings: EvalSettings | None = None) -> dict:
  """OUT/results.{md,csv,json} and OUT/curves_{psnr,ssim}.png from all finished scenes."""
  table = aggregate(results)
  rows = [(m, v) for m, v in table.items()]
  csv = ['metric,mean,std,n']
  md = [f'# GCD evaluation: {len(results)} scenes', '']
  if settings is not None:
    md += [f'checkpoint `{settings.checkpoint}`, config `{settings.config}`, split `{settings.split}`, '
           f'{settings.num_samples} samples × {settings.steps} steps, guidance {settings.guidance_min}→'
           f'{settings.guidance_max}, seed {settings.seed}', '']
  md += ['| metric | mean ± std | n |', '|---|---|---|']
  for m, v in rows:
    unit = f' {UNITS[m]}' if m in UNITS else ''
    csv.append(f'{m},{v["mean"]:.6g},{v["std"]:.6g},{v["n"]}')
    std = '' if not math.isfinite(v['std']) else f' ± {v["std"]:.4f}'
    md.append(f'| {m} | {v["mean"]:.4f}{std}{unit} | {v["n"]} |')
  md += ['', 'mean ± std over videos (scene × sample) of the per-video frame mean; diversity over scenes; '
         'n = videos (scenes) with a finite value; `*_copy`, `*_meanframe`, `*_reproject`: the baselines, one '
         'video per scene.', '']
  base = baseline_table(table)
  if base:
    md += ['## Against baselines', ''] + base + ['']
  fileio.write_text(os.path.join(out_dir, 'results.md'), '\n'.join(md))
  fileio.write_text(os.path.join(out_dir, 'results.csv'), '\n'.join(csv) + '\n')
  fileio.write_json(os.path.join(out_dir, 'results.json'),
               _jsonable({'num_scenes': len(results), 'metrics': table}))
  for name, keys in (('psnr', ('psnr', 'psnr_vis', 'psnr_occ')), ('ssim', ('ssim', 'ssim_vis', 'ssim_occ'))):
    series = {k: list(table[k]['per_frame_mean']) for k in keys if k in table}
    if series:
      media.line_plot(os.path.join(out_dir, f'curves_{name}.png'), series,
                      bands={k: list(table[k]['per_frame_std']) for k in series},
                      title=f'{name.upper()} per frame (mean ± std over {len(results)} scenes x samples)',
                      xlabel='frame', ylabel=name.upper() + (' (dB)' if name == 'psnr' else ''))
  return table


# ------------------------------------------------------------------------------------------- writing


def write_scene(out_dir: str, scene: str, example: dict, samples01: np.ndarray, frame_metrics: dict,
                settings: EvalSettings, *, fps: float) -> None:
  """The scene's folder appears complete or not at all (written under a staging name, then renamed; an
  interrupted run leaves no half scene); metrics.json in it marks the scene finished."""
  with fileio.atomic_dir(scene_dir(out_dir, scene), overwrite=True) as d:
    _write_scene_files(d, scene, example, samples01, frame_metrics, settings, fps=fps)


def _write_scene_files(d: str, scene: str, example: dict, samples01: np.ndarray, frame_metrics: dict,
                       settings: EvalSettings, *, fps: float) -> None:
  cols = [('input', example['input01'])] + [(f'sample {i + 1}', s) for i, s in enumerate(samples01)]
  cols.append(('ground truth', example['gt01']))
  frames = media.gallery_frames(cols)
  media.write_mp4(os.path.join(d, 'gallery.mp4'), frames, fps=fps)
  media.write_gif(os.path.join(d, 'gallery.gif'), frames, fps=fps)
  videos = dict(input=example['input01'], samples=samples01, gt=example['gt01'])
  if example.get('reproject01') is not None:
    videos['reproject'] = example['reproject01']
  with fileio.atomic_file(os.path.join(d, 'videos.npz'), '.npz') as tmp:
    np.savez(tmp, **{k: media.to_uint8(v) for k, v in videos.items()})
  frame = {k: frame_metrics[k] for k in FRAME_METRICS + BASELINE_METRICS + SAMPLE_MEAN_METRICS
           if k in frame_metrics}
  scene_level = {k: frame_metrics[k] for k in SCENE_METRICS if k in frame_metrics}
  video = {f'mean_{k}': _video_means(v) for k, v in frame.items()}
  if 'miou_video' in frame_metrics:
    video['miou'] = frame_metrics['miou_video']
  record = {
      'scene': scene, 'scene_idx': int(example['scene_idx']), 'control': example['control'],
      'settings_digest': settings.digest(), 'num_samples': int(samples01.shape[0]),
      'frame': frame, 'scene_metrics': scene_level, 'video': video,
      'time': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()),
  }
  if 'iou_intersection' in frame_metrics:
    record['iou_counts'] = {'intersection': frame_metrics['iou_intersection'],
                            'union': frame_metrics['iou_union']}
  fileio.write_json(os.path.join(d, 'metrics.json'), _jsonable(record))


# ------------------------------------------------------------------------------------------ the loop


@dataclasses.dataclass
class LoopStats:
  computed: list = dataclasses.field(default_factory=list)
  skipped: list = dataclasses.field(default_factory=list)
  seconds: float = 0.0
  seconds_inputs: float = 0.0    # rendering input / GT / reproject videos
  seconds_sampling: float = 0.0  # conditioning + guided sampling + decoding
  seconds_scoring: float = 0.0   # metrics, galleries, JSON


def run_loop(out_dir: str, scenes: Sequence[str], make_example: Callable[[str], dict],
             generate: Callable[[list[dict]], np.ndarray], settings: EvalSettings, *, batch_size: int,
             score: Callable[[np.ndarray, dict], dict], progress: bool = True,
             max_scenes: int = -1) -> LoopStats:
  """Evaluate `scenes` (this host's), `batch_size` videos per sampler call; skip finished scenes.

  make_example(scene) → dict(input01, gt01, reproject01|None, scene_idx, control, fps, ...conditioning);
  generate(examples) → samples01 [B, S, T, H, W, 3]; score(samples01[S,...], example) → frame metrics.
  max_scenes > 0 stops after that many newly computed scenes (a deliberate interruption, for tests).
  """
  stats = LoopStats()
  todo = []
  for s in scenes:
    (stats.skipped if is_finished(out_dir, s) else todo).append(s)
  if max_scenes > 0:
    todo = todo[:max_scenes]
  from gcd_jax import progress as progress_lib  # pylint: disable=g-import-not-at-top
  bar = progress_lib.bar(len(todo), enabled=progress, desc='evaluate', unit='scene')
  t0 = time.perf_counter()
  for i in range(0, len(todo), batch_size):
    chunk = todo[i:i + batch_size]
    t1 = time.perf_counter()
    examples = [make_example(s) for s in chunk]
    t2 = time.perf_counter()
    samples = generate(examples)  # [B, S, T, H, W, 3]
    t3 = time.perf_counter()
    for s, ex, smp in zip(chunk, examples, samples):
      write_scene(out_dir, s, ex, smp, score(smp, ex), settings, fps=ex.get('fps', 8))
      stats.computed.append(s)
      if bar is not None:
        bar.update(1)
    stats.seconds_inputs += t2 - t1
    stats.seconds_sampling += t3 - t2
    stats.seconds_scoring += time.perf_counter() - t3
  if bar is not None:
    bar.close()
  stats.seconds = time.perf_counter() - t0
  return stats


# --------------------------------------------------------------------------------------- examples


def _eval_renderer(render_hw, out_hw):
  """jit: per frame (lax.map) the input (all points, source camera), the ground truth (all points,
  target camera) and the reproject baseline (source view's points only, target camera, blur kernel 3)."""
  import functools as ft  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from gcd_jax.geometry import render  # pylint: disable=g-import-not-at-top
  kw = dict(render_height=render_hw[0], render_width=render_hw[1], out_height=out_hw[0], out_width=out_hw[1])

  @jax.jit
  def render_clip(xyz, rgb_u8, view_valid, k, src_c2w, dst_c2w, with_input):
    def frame(args):
      x, c, s, d = args
      x = x.astype(jnp.float32)
      c = c.astype(jnp.float32) / 255.0
      inp = jax.lax.cond(with_input, lambda: render.render_view(x, c, k, s, **kw),
                         lambda: jnp.zeros(out_hw + (3,), jnp.float32))
      gt = render.render_view(x, c, k, d, **kw)
      rep = render.reproject_view(x, c, k, d, view_valid, **kw)
      return inp, gt, rep
    return jax.lax.map(frame, (xyz, rgb_u8, src_c2w, dst_c2w))

  del ft
  return render_clip


_RENDERERS = {}


def _renderer(render_hw, out_hw):
  key = (tuple(render_hw), tuple(out_hw))
  if key not in _RENDERERS:
    _RENDERERS[key] = _eval_renderer(*key)
  return _RENDERERS[key]


class ExampleBuilder:
  """Scene name → evaluation example (input / GT / reproject videos in [0, 1] + conditioning).

  data_cfg: `data_pipelines.input_pipeline.data_config(...)` (source, resolution, num_frames);
  traj_cfg: `geometry.trajectory.trajectory_config(...)` of the checkpoint's training data.
  """

  def __init__(self, data_cfg, traj_cfg, controls: dict, *, control_idx: int = 0, cond_aug: float = 0.02,
               seed: int = 0, source=None, semantic: bool = False):
    from data_pipelines import input_pipeline  # pylint: disable=g-import-not-at-top
    self.ip = input_pipeline
    self.cfg = data_cfg
    self.traj = traj_cfg
    self.controls = controls
    self.control_idx = control_idx
    self.cond_aug = cond_aug
    self.seed = seed
    self.source = source if source is not None else input_pipeline.make_source(data_cfg)
    self.positions = {name: pos for pos in range(len(self.source))
                      for (_, name, _) in [self.source.scene(pos)]}
    self.kind = 'pardom' if data_cfg.dataset == 'pardom_4d' else 'kubric'
    self.semantic = semantic

  def scene_names(self) -> list[str]:
    return list(self.positions)

  def num_scene_frames(self) -> int:
    return min(max(self.source.scene(p)[2]) + 1 for p in range(len(self.source)))

  def __call__(self, scene: str) -> dict:
    from gcd_jax.geometry import cameras, trajectory  # pylint: disable=g-import-not-at-top
    if scene not in self.positions:
      raise EvaluationError(f'scene {scene} is not in split {self.cfg.split!r} of {self.cfg.dataset} '
                            f'(it has {len(self.positions)} scenes, e.g. {self.scene_names()[:3]})')
    pos = self.positions[scene]
    scene_idx, _, avail = self.source.scene(pos)
    ctrl = controls_lib.control_for(self.controls, scene, self.control_idx, self.kind)
    t = int(self.cfg.num_frames)
    clip_frames = ctrl['frame_start'] + ctrl['frame_skip'] * np.arange(t)
    missing = [int(f) for f in clip_frames if int(f) not in set(avail)]
    if missing:
      raise EvaluationError(f'{scene}: control frames {missing} not available (scene has frames '
                            f'{min(avail)}..{max(avail)})')
    data = self.source.load_clip(pos, clip_frames, with_segm=self.semantic)
    xyz, rgb = self.ip.clip_points(data)
    if self.semantic:
      # Semantic models (PD, output_modality segm, §3): the GT is the cloud rendered with the ontology
      # palette colour of each point's class id, exactly as the training target (input_pipeline).
      if self.kind != 'pardom':
        raise EvaluationError('semantic evaluation (mIoU) needs ParallelDomain-4D class labels; '
                              f'{self.cfg.dataset} has none')
      data['semantic_palette'] = self.source.semantic_palette
      rgb = self.ip.semantic_point_colors(data)
    num_views = int(data['intrinsics'].shape[0])
    sw, sh = self.ip._source_wh(data)  # pylint: disable=protected-access
    render_hw = (self.cfg.render_height, self.cfg.render_width)
    out_hw = (self.cfg.height, self.cfg.width)
    if self.kind == 'kubric':
      move_time = trajectory.resolve_move_time(self.traj)
      src, dst = trajectory.construct_trajectory(ctrl['spherical_start'], ctrl['spherical_end'], t, move_time,
                                                 self.traj.trajectory)
      src_c2w, dst_c2w = cameras.extrinsics_from_spherical(src), cameras.extrinsics_from_spherical(dst)
      k = self.ip.render_intrinsics(data['intrinsics'][0], (sw, sh), render_hw)
      source_view = controls_lib.KUBRIC_SOURCE_VIEW
      angles = trajectory.relative_angles(src, dst)
      mb = trajectory.motion_bucket_id(ctrl['spherical_start'], ctrl['spherical_end'],
                                       self.traj.delta_azimuth_range, self.traj.delta_elevation_range,
                                       self.traj.motion_bucket_range)
    else:
      traj = trajectory.pardom_topdown_trajectory(t, trajectory.resolve_move_time(self.traj), self.traj.trajectory)
      src_c2w, dst_c2w = traj['src_c2w'], traj['dst_c2w']
      k = self.ip.render_intrinsics(data['intrinsics'][self.ip.PD_INTRINSICS_VIEW], (sw, sh), render_hw)
      source_view = num_views - 3  # yaw-0 (sorted view 16, §4.8 item 8)
      angles = np.zeros((t, 3), np.float32)
      mb = int(self.traj.motion_bucket_range[0])
    points_per_view = xyz.shape[1] // num_views
    view_valid = np.repeat(np.arange(num_views) == source_view, points_per_view)
    inp, gt, rep = _renderer(render_hw, out_hw)(
        xyz, rgb, view_valid, np.asarray(k, np.float32), np.asarray(src_c2w, np.float32),
        np.asarray(dst_c2w, np.float32), self.kind == 'kubric')
    to01 = lambda x: np.clip((np.asarray(x, np.float32) + 1.0) / 2.0, 0.0, 1.0)
    if self.kind == 'pardom':
      inp = self.ip.pardom_input_video(data, self.cfg)
    input01 = to01(inp)
    cond = input01 * 2.0 - 1.0
    return {
        'scene': scene, 'scene_idx': int(scene_idx), 'control': ctrl,
        'input01': input01, 'gt01': to01(gt), 'reproject01': to01(rep),
        'fps': float(ctrl['fps']),
        # §4.10 conditioning (per video, [T, ...]); cond_frames noise keyed by (seed, scene).
        'cond_frames_without_noise': cond.astype(np.float32),
        'cond_frames': (cond + self.cond_aug * cond_noise(self.seed, scene_idx, cond.shape)).astype(np.float32),
        'fps_id': np.full((t,), ctrl['fps'], np.int32),
        'motion_bucket_id': np.full((t,), mb, np.int32),
        'cond_aug': np.full((t,), self.cond_aug, np.float32),
        'scaled_relative_angles': np.asarray(angles, np.float32),
        'scaled_relative_pose': cameras.relative_pose(src_c2w, dst_c2w).astype(np.float32),
    }


# ---------------------------------------------------------------------------------------------- CLI


# Errors with a message meant for the user (printed without a traceback by the command). All are
# ValueError / FileNotFoundError subclasses: EvaluationError, ControlError, ModelConfigError,
# CheckpointError, LPIPSWeightsError, MediaError.
EXPECTED_ERRORS = (ValueError, FileNotFoundError)


@dataclasses.dataclass
class EvalRequest(EvalSettings):
  """What to evaluate and how: the EvalSettings that determine the numbers, plus where the inputs and outputs
  live and how to run (`gcd-jax evaluate`'s options, typed; gcd_jax/commands/evaluate.py)."""
  out: str = ''                   # output folder (required)
  overrides: tuple = ()           # --config.FIELD=VALUE for `config`
  data: str = ''                  # data preset; '' = the training config's data, else 'procedural'
  data_dir: str = ''
  trajectory: str = ''
  batch_size: int = 0             # 0 = the number of local devices
  lpips_backbone: str = ''
  lpips_heads: str = ''
  max_scenes: int = -1
  progress: bool = True

  def settings(self) -> EvalSettings:
    """The number-determining part, with absolute paths (stored in OUT/run.json)."""
    values = {f.name: getattr(self, f.name) for f in dataclasses.fields(EvalSettings)}
    values['checkpoint'] = os.path.abspath(self.checkpoint)
    for k in ('list_file', 'controls_file'):
      values[k] = os.path.abspath(values[k]) if values[k] else ''
    return EvalSettings(**values)

  @classmethod
  def from_options(cls, options) -> 'EvalRequest':
    """From any object with these attributes (the command's parsed options; no_progress → progress)."""
    names = {f.name for f in dataclasses.fields(cls)}
    values = {n: getattr(options, n) for n in names if hasattr(options, n)}
    values['overrides'] = tuple(values.get('overrides', ()))
    if hasattr(options, 'no_progress'):
      values['progress'] = not options.no_progress
    return cls(**values)


def resolve_data_config(req: 'EvalRequest', train_cfg):
  """--data / --data-dir / training config → (data config, trajectory config)."""
  from data_pipelines import input_pipeline  # pylint: disable=g-import-not-at-top
  from gcd_jax.geometry import trajectory  # pylint: disable=g-import-not-at-top
  if req.data:
    data_cfg = input_pipeline.data_config(req.data)
  elif train_cfg is not None and 'data' in train_cfg:
    data_cfg = train_cfg.data.copy_and_resolve_references()
  else:
    data_cfg = input_pipeline.data_config('procedural')
  if req.data_dir:
    data_cfg.data_dir = req.data_dir
  data_cfg.split = req.split
  traj_preset = req.trajectory or data_cfg.trajectory
  traj_cfg = trajectory.trajectory_config(traj_preset)
  traj_cfg.num_frames = int(data_cfg.num_frames)
  return data_cfg, traj_cfg


@dataclasses.dataclass
class _Plan:
  """Everything `evaluate` needs, resolved and checked before any model compute."""
  model_cfg: object
  settings: EvalSettings
  builder: 'ExampleBuilder'
  scenes: list
  controls: dict
  lpips_model: object
  palette: object
  ignore: object


def plan_evaluation(req: 'EvalRequest') -> _Plan:
  """Configs, data, scene list, controls and metric models of a request; every input check (EvaluationError,
  ControlError, ...) fires here, before the model is loaded."""
  from data_pipelines import splits  # pylint: disable=g-import-not-at-top
  from gcd_jax.evaluate import generator as gen_lib  # pylint: disable=g-import-not-at-top
  from gcd_jax.evaluate import lpips as lpips_lib  # pylint: disable=g-import-not-at-top
  if req.num_samples < 1:
    raise EvaluationError(f'--num-samples {req.num_samples}: must be ≥ 1')
  if req.steps < 2:  # the Euler schedule runs from σ_max to σ_min (diffusion/discretization.py)
    raise EvaluationError(f'--steps {req.steps}: must be ≥ 2 (the sampler steps from σ_max to σ_min)')
  if req.config:
    model_cfg, train_cfg = gen_lib.resolve_config(req.config, req.overrides)
  else:
    model_cfg, train_cfg = gen_lib.config_from_checkpoint(req.checkpoint)
  gen_lib.check_checkpoint_matches(req.checkpoint, model_cfg)
  if req.decoding_t < 1:
    raise EvaluationError('--decoding-t must be ≥ 1')
  data_cfg, traj_cfg = resolve_data_config(req, train_cfg)
  multiple = gen_lib.required_multiple(model_cfg)
  if data_cfg.height % multiple or data_cfg.width % multiple:
    raise EvaluationError(f'data resolution {data_cfg.width}×{data_cfg.height} is not a multiple of {multiple} '
                          f'(VAE × U-Net downsampling of {model_cfg.name!r}); fix the data config')
  if not req.out:
    raise EvaluationError('an output folder is needed (--out)')
  settings = req.settings()
  lpips_model = None
  if req.lpips != 'none':
    lpips_model = lpips_lib.load_lpips(req.lpips, req.lpips_backbone or None, req.lpips_heads or None)
  palette = ignore = None
  semantic = bool(req.semantic_palette) or data_cfg.get('output_modality', 'rgb') == 'semantic'
  if semantic and not req.semantic_palette:
    raise EvaluationError('this checkpoint was trained on semantic targets (data.output_modality=semantic): pass '
                          '--semantic-palette <pardom root>/scene_000000/ontology/<hash>.json for mIoU')
  if req.semantic_palette:
    from gcd_jax.evaluate import metrics  # pylint: disable=g-import-not-at-top
    palette, _, ignore = metrics.load_semantic_palette(req.semantic_palette)

  builder = ExampleBuilder(data_cfg, traj_cfg, {}, control_idx=req.control_idx, cond_aug=req.cond_aug,
                           seed=req.seed, semantic=semantic)
  scenes = builder.scene_names()
  if req.list_file:
    wanted = splits.read_scene_list(req.list_file)
    unknown = [s for s in wanted if s not in builder.positions]
    if unknown:
      raise EvaluationError(f'{req.list_file}: scenes {unknown[:5]} are not in split {req.split!r} of '
                            f'{data_cfg.dataset}')
    scenes = wanted
  if not scenes:
    raise EvaluationError(f'no scenes to evaluate in split {req.split!r}')
  if req.controls_file:
    ctrl = controls_lib.load_controls(req.controls_file)
    for s in scenes:  # fail early on a control file that does not cover the list
      controls_lib.control_for(ctrl, s, req.control_idx, builder.kind)
  elif builder.kind == 'kubric':
    ctrl = controls_lib.generate_kubric_controls(scenes, traj_cfg, seed=req.seed,
                                                 num_controls=req.control_idx + 1,
                                                 num_scene_frames=builder.num_scene_frames())
  else:
    raise EvaluationError('ParallelDomain evaluation needs --controls (eval/list/pardom_valtest_controls.json)')
  builder.controls = ctrl
  return _Plan(model_cfg=model_cfg, settings=settings, builder=builder, scenes=scenes, controls=ctrl,
               lpips_model=lpips_model, palette=palette, ignore=ignore)


def evaluate(req: 'EvalRequest') -> str:
  """The `gcd-jax evaluate` job (see module docstring). Returns a printable summary."""
  import jax  # pylint: disable=g-import-not-at-top
  from gcd_jax.evaluate import generator as gen_lib  # pylint: disable=g-import-not-at-top
  plan = plan_evaluation(req)
  model_cfg, settings, builder, scenes, ctrl = plan.model_cfg, plan.settings, plan.builder, plan.scenes, plan.controls
  lpips_model, palette, ignore = plan.lpips_model, plan.palette, plan.ignore

  os.makedirs(req.out, exist_ok=True)
  check_run_folder(req.out, settings)
  if jax.process_index() == 0:
    controls_lib.write_controls(os.path.join(req.out, 'controls.json'),
                                {s: ctrl[s] for s in scenes if s in ctrl})
  mine = host_scenes(scenes, jax.process_index(), jax.process_count())
  todo = [s for s in mine if not is_finished(req.out, s)]

  batch_size = req.batch_size or len(jax.local_devices())
  stats = LoopStats(skipped=[s for s in mine if s not in todo])
  if todo:
    generator = gen_lib.VideoGenerator(req.checkpoint, model_cfg, batch_size=batch_size, steps=req.steps,
                                       num_samples=req.num_samples, guidance=(req.guidance_min,
                                                                               req.guidance_max),
                                       decoding_t=req.decoding_t, progress=req.progress)

    def generate(examples):
      keys = np.stack([[sample_seed(req.seed, e['scene_idx'], j) for j in range(req.num_samples)]
                       for e in examples])
      return generator(examples, keys)

    def score(samples01, ex):
      return scene_metrics(samples01, ex['gt01'], ex['reproject01'], input01=ex['input01'], lpips_model=lpips_model,
                           palette=palette, ignore_index=ignore)

    stats = run_loop(req.out, mine, builder, generate, settings, batch_size=batch_size, score=score,
                     progress=req.progress, max_scenes=req.max_scenes)
  results = load_scene_results(req.out)
  table = write_reports(req.out, results, settings) if jax.process_index() == 0 else {}
  fileio.write_json(os.path.join(req.out, f'progress_host{jax.process_index()}.json'),
               dataclasses.asdict(stats))
  lines = [f'evaluated {len(stats.computed)} scenes ({len(stats.skipped)} already done) in '
           f'{stats.seconds:.1f}s; {len(results)} finished scenes in {req.out}']
  for m in ('psnr', 'ssim', 'psnr_occ', 'lpips', 'miou_video'):
    if m in table:
      lines.append(f'  {m}: {table[m]["mean"]:.4f} ± {table[m]["std"]:.4f} (n={table[m]["n"]})')
  lines += ['  ' + row for row in baseline_table(table)]
  return '\n'.join(lines)
