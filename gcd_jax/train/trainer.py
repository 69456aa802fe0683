r"""The GCD trainer: one readable loop (big_vision style). docs/reference.md §3 for the reference recipe.

  gcd-jax train --config configs/tiny.py --workdir /tmp/gcd_tiny                      # CPU, seconds
  gcd-jax train --config configs/gcd.py:data=kubric,traj=gradual,az=90 --workdir W \
      --config.init_checkpoint=/ckpt/svd                                              # pod / cluster

Sections: mesh · input · model + optimizer · sharding · initialise or resume · update step · checkpoint ·
preview sampling · loop. Workdir layout: W/config.json, W/checkpoints/<step>/{state,data}, W/tb/ (TensorBoard),
W/metrics.jsonl (one line per logged step, process 0), W/previews/step_<n>.mp4, W/profile/.
A run restarted with the same workdir resumes from the latest checkpoint (params, Adam, step, RNG and data
position), onto the current mesh whatever the device count.
"""

from __future__ import annotations

import math
import os
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gcd_jax.train import checkpoint as ckpt_lib
from gcd_jax.train import input as input_lib
from gcd_jax.train import metrics as metrics_lib
from gcd_jax.train import sharding as sh
from gcd_jax.train import train_step as ts


class NonFiniteError(FloatingPointError):
  """Loss or gradients went NaN/Inf: the run stops; the last good checkpoint is the latest one."""


def build_layouts(config):
  from gcd_jax.models.clip import build_clip  # pylint: disable=g-import-not-at-top
  from gcd_jax.models.gcd import build_gcd_network  # pylint: disable=g-import-not-at-top
  from gcd_jax.models.vae import build_vae  # pylint: disable=g-import-not-at-top
  builders = dict(network=build_gcd_network, vae=build_vae, clip=build_clip)
  wanted = ('network', 'vae', 'clip') if config.features == 'in_step' else ('network',)
  layouts = {k: ts.ParamLayout.of(ts.abstract_module(builders[k], config.model)) for k in wanted}
  return builders, layouts


class TrainSetup(NamedTuple):
  """What the train step is built from (the trainer and bench/programs.py build it the same way)."""
  builders: dict            # component → constructor
  layouts: dict             # component → ParamLayout ('network', plus 'vae' / 'clip' for in-step features)
  net_layout: object
  frozen_layouts: dict      # the frozen components' layouts
  tx: object                # optax optimiser
  schedule: object          # learning-rate schedule
  abstract_state: dict      # ShapeDtypeStructs of the train state
  state_specs: dict         # PartitionSpecs of the train state
  frozen_specs: dict        # PartitionSpecs of the frozen weights


def train_setup(config, mesh) -> TrainSetup:
  builders, layouts = build_layouts(config)
  frozen_layouts = {k: v for k, v in layouts.items() if k != 'network'}
  tx, schedule = ts.make_optimizer(config.optim)
  abstract_state, state_specs = ts.state_specs(config, layouts['network'], tx, mesh)
  return TrainSetup(builders, layouts, layouts['network'], frozen_layouts, tx, schedule, abstract_state,
                    state_specs, ts.frozen_specs(config, frozen_layouts, mesh))


def initial_weights(config, builders, layouts, frozen_specs, net_specs, mesh, sources: dict, log=print):
  """(network flat params, {'vae': flat, 'clip': flat}) on their shardings. sources: component → a
  `gcd-jax convert`-format folder to load it from (SVD checkpoints lack the camera layers → fresh init when
  config.init_missing); a component with no source is initialised randomly (seed + its index)."""
  all_specs = dict(network=net_specs, **frozen_specs)
  out = {}
  for i, (name, layout) in enumerate(layouts.items()):
    src = sources.get(name, '')
    if not src:
      out[name] = ts.init_flat(builders[name], config.model, layout, sh.named(mesh, all_specs[name]),
                               config.seed + i)
      continue
    from gcd_jax.convert import checkpoint_io  # pylint: disable=g-import-not-at-top
    stored_cfg = checkpoint_io.checkpoint_config(src)
    stored_layout = ts.ParamLayout.of(checkpoint_io.abstract_module(stored_cfg, name))
    want = layout.abstract_flat()
    shardings = {n: jax.sharding.NamedSharding(mesh, all_specs[name][n]) if n in want and
                 want[n].shape == a.shape else jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
                 for n, a in stored_layout.abstract_flat().items()}
    sh_state = jax.tree.unflatten(stored_layout.treedef, [shardings[n] for n in stored_layout.names])
    module = checkpoint_io.restore_component(src, stored_cfg, name, sh_state)
    got = stored_layout.flat(module)
    missing = [n for n in layout.names if n not in got or got[n].shape != want[n].shape]
    if missing:
      if not config.init_missing:
        raise ValueError(f'{name}: {len(missing)} parameters not in {src} (e.g. {missing[:3]}); '
                         'set --config.init_missing=true to initialise them fresh (the camera layers of an '
                         'SVD checkpoint)')
      log(f'[train] {name}: initialising {len(missing)} parameters absent from the checkpoint: {missing[:6]}')
      fresh = ts.init_flat(builders[name], config.model, layout, sh.named(mesh, all_specs[name]), config.seed + i)
      got = {**{n: fresh[n] for n in missing}, **{n: got[n] for n in layout.names if n not in missing}}
    out[name] = {n: got[n] for n in layout.names}
  return out.pop('network'), out


FROZEN_DIR = 'frozen'  # W/frozen: the run's frozen VAE + CLIP (+ the initial network) when not from a checkpoint


def frozen_dir(workdir: str) -> str:
  return os.path.join(workdir, FROZEN_DIR)


def weight_sources(config, workdir: str, layouts: dict, log=print) -> dict:
  """component → checkpoint folder. init_checkpoint if set; else W/frozen (written at the first start: by
  the VAE fit when config.vae_fit.steps > 0, else by `save_frozen` after random init), so that a resume,
  `sample`, `evaluate` and `export` of the workdir all see the same frozen weights."""
  if config.init_checkpoint:
    from gcd_jax.train import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
    src = config.init_checkpoint
    if workdir_lib.is_workdir(src):  # another run: its latest step's raw weights (exported once, W/models/)
      src = workdir_lib.resolve_model(src, weights='raw', log=log)
    return {k: src for k in layouts}
  fdir = frozen_dir(workdir)
  if os.path.isdir(fdir):
    return {k: fdir for k in layouts}
  fit = config.get('vae_fit')
  if fit is not None and fit.steps > 0 and 'vae' in layouts:
    if jax.process_count() > 1:
      raise ValueError('config.vae_fit runs on one process; fit it in a single-process run first (same workdir) '
                       'or set --config.vae_fit.steps=0 with an init_checkpoint that has a VAE')
    fit_and_save_vae(config, fdir, log)
    return {k: fdir for k in layouts}
  return {}


def fit_and_save_vae(config, out_dir: str, log=print) -> dict:
  """Fits the VAE on training clips (vae_fit.py) and writes out_dir (random network + CLIP, fitted VAE)."""
  from data_pipelines import input_pipeline  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from gcd_jax.convert import checkpoint_io  # pylint: disable=g-import-not-at-top
  from gcd_jax.models import build_clip, build_gcd_network  # pylint: disable=g-import-not-at-top
  from gcd_jax.train import vae_fit  # pylint: disable=g-import-not-at-top

  def clips(split, n):
    data = config.data.copy_and_resolve_references()
    data.split, data.shard_index, data.shard_count, data.batch_size = split, 0, 1, 8
    data.seed = config.seed + 17
    it = input_pipeline.make_iterator(data)
    out = []
    while sum(len(c) for c in out) < n:
      ex = next(it)
      out += [np.asarray(ex['jpg'], np.float32), np.asarray(ex['cond_frames_without_noise'], np.float32)]
    return np.concatenate(out)[:n]

  fit = config.vae_fit
  t0 = time.perf_counter()
  train_clips = clips('train', int(fit.num_clips))
  try:
    held = clips('val', 8)
  except (ValueError, FileNotFoundError, StopIteration):
    held = train_clips[-8:]
  log(f'[vae fit] {len(train_clips)} training clips rendered in {time.perf_counter() - t0:.0f}s')
  vae, stats = vae_fit.fit_vae(config.model, train_clips, held, fit, seed=config.seed + 1, log=log)
  network = build_gcd_network(config.model, nnx.Rngs(config.seed))
  clip = build_clip(config.model, nnx.Rngs(config.seed + 2))
  checkpoint_io.save_model_checkpoint(out_dir, network, vae, clip, config.model,
                                      dict(source=dict(kind='gcd-jax vae fit', **stats)))
  return stats


def save_frozen(config, workdir: str, layouts: dict, params: dict, frozen: dict) -> None:
  """Writes W/frozen from the (random) initial weights, once, on process 0."""
  if jax.process_index() != 0 or os.path.isdir(frozen_dir(workdir)) or config.features != 'in_step':
    return
  from gcd_jax.convert import checkpoint_io  # pylint: disable=g-import-not-at-top
  host = lambda name, flat: layouts[name].module(jax.device_get(flat))  # noqa: E731
  checkpoint_io.save_model_checkpoint(frozen_dir(workdir), host('network', params), host('vae', frozen['vae']),
                                      host('clip', frozen['clip']), config.model,
                                      dict(source=dict(kind='gcd-jax train random init', seed=int(config.seed))))


def check_config(config):
  """Ranges and consistency, before anything is compiled or written (ValueError names the field and fix)."""
  from gcd_jax.models.config import validate_model_config  # pylint: disable=g-import-not-at-top
  o = config.optim
  checks = [
      (config.batch_size > 0, f'config.batch_size={config.batch_size}: must be > 0 (videos per step, global)'),
      (config.total_steps >= 0, f'config.total_steps={config.total_steps}: must be ≥ 0'),
      (o.lr > 0, f'config.optim.lr={o.lr}: the learning rate must be > 0 (the reference uses 2e-5)'),
      (0 <= o.b1 < 1 and 0 <= o.b2 < 1, f'config.optim.b1/b2={o.b1}/{o.b2}: Adam betas must be in [0, 1)'),
      (o.eps > 0, f'config.optim.eps={o.eps}: must be > 0'),
      (o.warmup_steps >= 0, f'config.optim.warmup_steps={o.warmup_steps}: must be ≥ 0'),
      (o.grad_clip_norm >= 0, f'config.optim.grad_clip_norm={o.grad_clip_norm}: must be ≥ 0 (0 = off)'),
      (0 <= o.ema_decay < 1, f'config.optim.ema_decay={o.ema_decay}: must be in [0, 1) (0 = no EMA)'),
      (o.get('decay_steps', 0) >= 0, f'config.optim.decay_steps={o.get("decay_steps")}: must be ≥ 0 (0 = constant)'),
      (config.log_every_steps > 0, f'config.log_every_steps={config.log_every_steps}: must be > 0'),
      (config.checkpoint.every_steps >= 0, f'config.checkpoint.every_steps={config.checkpoint.every_steps}: '
       'must be ≥ 0 (0 = only at the end)'),
      (config.data.height > 0 and config.data.width > 0 and config.data.num_frames > 0,
       f'config.data: height, width and num_frames must be > 0 (got {config.data.height}, {config.data.width}, '
       f'{config.data.num_frames})'),
      (config.features in ('in_step', 'precomputed'),
       f"config.features={config.features!r}: choose 'in_step' or 'precomputed'"),
  ]
  from gcd_jax.config_flags import ConfigError  # pylint: disable=g-import-not-at-top
  for ok, message in checks:
    if not ok:
      raise ConfigError(message)
  validate_model_config(config.model)
  if config.data.get('output_modality', 'rgb') == 'semantic' and config.data.dataset != 'pardom_4d':
    raise ValueError(f'data.output_modality=semantic needs ParallelDomain-4D (class labels); got data.dataset='
                     f'{config.data.dataset!r}. Use configs/gcd.py:data=pardom,modality=semantic.')
  if config.model.num_frames != config.data.num_frames:
    raise ValueError(f'model.num_frames={config.model.num_frames} != data.num_frames={config.data.num_frames}')


# Fields that may change when a run is resumed (how long, how often to log / save / preview, where the
# data lives); any other difference is refused unless config.resume_with_changes.
RESUMABLE_CHANGES = ('total_steps', 'log_every_steps', 'checkpoint.', 'preview.', 'profile.', 'data.data_dir',
                     'data.manual_dir', 'data.num_threads', 'data.num_workers', 'data.prefetch_buffer_size',
                     'peak_tflops_per_device', 'resume_with_changes')


def _flat(d, prefix=''):
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flat(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = v
  return out


def config_changes(old: dict, new: dict) -> list[str]:
  """'field: old → new' for every field that differs (ignoring RESUMABLE_CHANGES)."""
  import json  # pylint: disable=g-import-not-at-top
  a, b = _flat(old), _flat(json.loads(json.dumps(new, default=str)))
  out = []
  for k in sorted(set(a) | set(b)):
    if any(k == p or (p.endswith('.') and k.startswith(p)) for p in RESUMABLE_CHANGES):
      continue
    if a.get(k, '<absent>') != b.get(k, '<absent>'):
      out.append(f'{k}: {a.get(k, "<absent>")!r} → {b.get(k, "<absent>")!r}')
  return out


def check_resume(config, workdir: str) -> None:
  """A workdir with checkpoints resumes only with the config it was started with (see RESUMABLE_CHANGES)."""
  import json  # pylint: disable=g-import-not-at-top
  path = os.path.join(workdir, 'config.json')
  ckpts = os.path.join(workdir, 'checkpoints')
  if not (os.path.exists(path) and os.path.isdir(ckpts) and os.listdir(ckpts)):
    return
  with open(path) as f:
    old = json.load(f)
  changes = config_changes(old, json.loads(config.to_json_best_effort()))
  if changes and not config.get('resume_with_changes', False):
    from gcd_jax.config_flags import ConfigError  # pylint: disable=g-import-not-at-top
    shown = '; '.join(changes[:6]) + (f'; and {len(changes) - 6} more' if len(changes) > 6 else '')
    raise ConfigError(f'{workdir} was trained with another config ({shown}); use a new --workdir, or resume with '
                     'these changes on purpose with --config.resume_with_changes=true')


def ensure_dataset(config, log=print) -> None:
  """The TFDS dataset the config reads: built now when it is generated (procedural_4d), else an error that
  names the build command (Kubric-4D / ParallelDomain-4D need their downloaded files)."""
  d = config.data
  if d.get('source', 'tfds') != 'tfds':
    return
  from data_pipelines import tfds_builders  # pylint: disable=g-import-not-at-top
  builder = tfds_builders.get_builder(d.dataset, data_dir=d.data_dir, config=d.builder_config)
  if builder.is_prepared():
    return
  if d.dataset == 'procedural_4d' and not d.get('manual_dir'):
    if jax.process_count() > 1:
      raise FileNotFoundError(f'{d.dataset}/{d.builder_config} is not built in {d.data_dir}; build it once with '
                              f'`gcd-jax data build {d.dataset} --config {d.builder_config} --data-dir {d.data_dir}`')
    log(f'[train] building the dataset {d.dataset}/{d.builder_config} in {d.data_dir} (first use)')
    tfds_builders.build(d.dataset, data_dir=d.data_dir, config=d.builder_config)
    return
  raise FileNotFoundError(
      f'{d.dataset}/{d.builder_config} is not built in {d.data_dir}; build it with `gcd-jax data build '
      f'{d.dataset} --config {d.builder_config} --manual-dir DOWNLOADED_FOLDER --data-dir {d.data_dir}` '
      '(or set --config.data.data_dir to where it is built)')


def parameter_overview(workdir: str, layouts: dict) -> str:
  """clu's parameter table of every component to W/parameters.txt; → the one-line totals for the log."""
  from clu import parameter_overview as po  # pylint: disable=g-import-not-at-top
  from gcd_jax import fileio  # pylint: disable=g-import-not-at-top
  tables, totals = [], []
  for name, layout in layouts.items():
    flat = layout.abstract_flat()
    tables.append(f'## {name}\n' + po.get_parameter_overview(flat, include_stats=False))
    totals.append(f'{name} {sum(math.prod(a.shape) for a in flat.values()) / 1e6:.2f} M')
  fileio.write_text(os.path.join(workdir, 'parameters.txt'), '\n\n'.join(tables) + '\n')
  return f'[train] parameters: {", ".join(totals)} (table: {os.path.join(workdir, "parameters.txt")})'


def train(config, workdir: str, *, log=None) -> dict:
  """Runs (or resumes) training to config.total_steps. → summary dict (final step, last metrics, timings)."""
  log = log or (lambda *a: print(*a, flush=True))  # flushed: logs are often redirected to files
  # Everything that can be wrong with the request is checked before the first file is written.
  check_config(config)
  from gcd_jax.config_flags import ConfigError  # pylint: disable=g-import-not-at-top
  try:
    mesh = sh.make_mesh(config.mesh.shape, config.mesh.axes, dcn_shape=config.mesh.get('dcn_shape'))
  except ValueError as e:  # a mesh that does not fit the devices: the request is wrong, not the program
    raise ConfigError(str(e)) from None
  if config.batch_size % sh.batch_divisor(mesh):
    d = sh.batch_divisor(mesh)
    raise ConfigError(f'config.batch_size={config.batch_size} must be a multiple of {d}, the data-parallel size '
                     f'of the mesh {dict(mesh.shape)} over {jax.device_count()} devices; use e.g. '
                     f'--config.batch_size={max(d, config.batch_size // d * d)}')
  check_resume(config, workdir)
  ensure_dataset(config, log)
  os.makedirs(workdir, exist_ok=True)
  is_main = jax.process_index() == 0
  if is_main:
    from gcd_jax import fileio  # pylint: disable=g-import-not-at-top
    fileio.write_text(os.path.join(workdir, 'config.json'), config.to_json_best_effort(indent=1))

  # ---------------------------------------------------------------------------------------------- mesh
  log(f'[train] {jax.process_count()} process(es), {jax.device_count()} devices, mesh {dict(mesh.shape)}')

  # --------------------------------------------------------------------------------------------- input
  data_iter = input_lib.make_train_iterator(config)

  # ------------------------------------------------------------------- model, optimizer and shardings
  (builders, layouts, net_layout, frozen_layouts, tx, schedule, abstract_state, state_spec_tree,
   frozen_spec_tree) = train_setup(config, mesh)

  # ---------------------------------------------------------------------------- initialise or resume
  manager = ckpt_lib.make_manager(os.path.join(workdir, 'checkpoints'), max_to_keep=config.checkpoint.max_to_keep,
                                  async_save=config.checkpoint.async_save)
  sources = weight_sources(config, workdir, layouts, log)
  params, frozen = initial_weights(config, builders, layouts, frozen_spec_tree, state_spec_tree['params'], mesh,
                                   sources, log)
  if not sources:
    save_frozen(config, workdir, layouts, params, frozen)
  if is_main:
    log(parameter_overview(workdir, layouts))
  if manager.latest_step() is not None:
    del params
    state, start = ckpt_lib.restore(manager, abstract_state, state_spec_tree, mesh, data_iter)
    log(f'[train] resumed from step {start} ({manager.directory})')
  else:
    state = ts.initial_state(config, net_layout, params, tx, state_spec_tree, mesh, config.seed)
    del params
    start = 0

  if start >= config.total_steps:  # a finished run (e.g. `train --export` again): nothing to compile
    manager.close()
    log(f'[train] already at step {start} of {config.total_steps}: nothing to train')
    return dict(status='done', step=start, metrics={}, flops_per_step=0.0, state=state, frozen=frozen,
                layouts=layouts, mesh=mesh)

  # --------------------------------------------------------------------------------------- update step
  step_fn = ts.make_train_step(config, net_layout, frozen_layouts.get('vae'), frozen_layouts.get('clip'), tx, schedule)
  first = input_lib.train_batch(next(data_iter), config.features)
  batch_abstract = {k: jax.ShapeDtypeStruct((config.batch_size,) + v.shape[1:], v.dtype) for k, v in first.items()}
  jitted = ts.jit_train_step(step_fn, mesh, state_spec_tree, frozen_spec_tree, batch_abstract,
                             attention_impl=config.model.get('attention', 'auto'))
  t0 = time.perf_counter()
  log(f'[train] compiling the train step ({config.batch_size} videos × {config.model.num_frames} frames per step; '
      'cached across runs by JAX\'s persistent compilation cache)')
  compiled = jitted.lower(state, frozen, batch_abstract).compile()
  flops = metrics_lib.compiled_flops(compiled)
  log(f'[train] compiled the train step in {time.perf_counter() - t0:.1f}s; '
      f'{flops / 1e9:.3f} GFLOP per device per step (XLA cost analysis)')

  # ---------------------------------------------------------------------------------------- checkpoint
  writer = metrics_lib.MetricWriter(workdir, start_step=start)
  throughput = metrics_lib.Throughput(flops, config.batch_size, config.peak_tflops_per_device)
  preemption = ckpt_lib.Preemption().install()
  every = config.checkpoint.every_steps

  # ---------------------------------------------------------------------------------- preview sampling
  def maybe_preview(step):
    pe = config.preview.every_steps
    if pe and step % pe == 0 and config.features == 'in_step':
      write_preview(config, net_layout, frozen_layouts, state['params'], frozen, first, mesh,
                    os.path.join(workdir, 'previews', f'step_{step:08d}.mp4'))

  # ---------------------------------------------------------------------------------------------- loop
  step = start
  batch = first
  last = {}
  profiling = False
  status = 'done'
  try:
    while step < config.total_steps:
      if config.profile.start_step >= 0 and step == config.profile.start_step and is_main:
        jax.profiler.start_trace(os.path.join(workdir, 'profile'))
        profiling = True
      state, m = compiled(state, frozen, sh.to_global(batch, mesh))
      m = metrics_lib.to_host(m)
      if not bool(m['finite']):
        raise NonFiniteError(f'non-finite training step at step {step}: '
                             f'{ts.nonfinite_report(m, net_layout.names)}. The update was not applied and no '
                             f'checkpoint was written; the latest good one is step {manager.latest_step()}.')
      step += 1
      if profiling and step >= config.profile.start_step + config.profile.num_steps:
        jax.profiler.stop_trace()
        profiling = False
      if step % config.log_every_steps == 0 or step == config.total_steps:
        last = {k: float(m[k]) for k in ('loss', 'grad_norm', 'lr', 'cur_top', 'param_norm', 'sigma_mean')}
        last.update(throughput.update(step))
        writer.write(step, last)
        writer.progress(step, config.total_steps, last)
      if (every and step % every == 0) or step == config.total_steps or preemption.requested:
        ckpt_lib.save(manager, step, state, data_iter, force=True)
      if preemption.requested:
        manager.wait_until_finished()
        log(f'[train] {preemption.signal_name}: checkpoint for step {step} committed; exiting (rerun the same '
            'command to resume)')
        status = preemption.status
        break
      maybe_preview(step)
      if step < config.total_steps:
        batch = input_lib.train_batch(next(data_iter), config.features)
  finally:
    if profiling:
      jax.profiler.stop_trace()
    manager.wait_until_finished()
    manager.close()
    writer.close()
    preemption.uninstall()
  return dict(status=status, step=step, metrics=last, flops_per_step=flops, state=state, frozen=frozen,
              layouts=layouts, mesh=mesh)


def export_model(config, workdir: str, step: int, out_dir: str) -> str:
  """Writes step `step` of the run (EMA weights when it keeps them) as a `gcd-jax convert`-format folder."""
  from gcd_jax.train import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  weights = 'ema' if config.optim.get('ema_decay', 0.0) > 0 else 'params'
  return workdir_lib.export_step(workdir, out_dir, step=step, weights=weights)


def write_preview(config, net_layout, frozen_layouts, params, frozen, batch, mesh, path: str,
                  key=None) -> np.ndarray:
  """Samples the batch's first videos with the jitted sampler (§2.4, preview guidance) and writes
  input | generated | target as one mp4. → generated videos [B, T, H, W, 3] in [0, 1]."""
  from gcd_jax.diffusion.conditioner import Conditioner  # pylint: disable=g-import-not-at-top
  from gcd_jax.diffusion.sampler import make_sample_fn  # pylint: disable=g-import-not-at-top
  t = int(config.model.num_frames)
  n_div = sh.batch_divisor(mesh)
  b = n_div * max(1, 1 // n_div)
  rows = {k: jnp.asarray(np.asarray(v)[:b].reshape((-1,) + np.asarray(v).shape[2:]))
          for k, v in batch.items() if k != 'idx'}
  net = net_layout.module(params)
  vae = frozen_layouts['vae'].module(frozen['vae'])
  clip = frozen_layouts['clip'].module(frozen['clip'])
  cond = Conditioner(config.model, vae, clip)(rows)
  sample_fn = make_sample_fn(config.diffusion, num_frames=t, mesh=mesh,
                             attention_impl=config.model.get('attention', 'auto'))
  videos = sample_fn(net, vae, cond, jax.random.key(config.seed) if key is None else key)
  videos = np.asarray(videos).reshape((b, t) + videos.shape[1:])
  if jax.process_index() == 0:
    write_side_by_side(path, np.asarray(batch['cond_frames_without_noise'])[:b], videos, np.asarray(batch['jpg'])[:b])
  return videos


def write_side_by_side(path: str, inputs, generated, target, fps: int = 4) -> None:
  """inputs/target [B, T, H, W, 3] in [-1, 1], generated in [0, 1] → mp4 of rows input | generated | target."""
  from gcd_jax.evaluate import media  # pylint: disable=g-import-not-at-top
  to01 = lambda v: np.clip((np.asarray(v) + 1.0) / 2.0, 0, 1)  # noqa: E731
  grid = np.concatenate([to01(inputs), np.asarray(generated), to01(target)], axis=3)  # along width
  grid = np.concatenate(list(grid), axis=1)  # videos stacked vertically: [T, B·H, 3W, 3]
  media.write_mp4(path, grid, fps=fps)
