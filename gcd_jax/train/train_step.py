"""The GCD train step: one `jax.jit` program with explicit in/out shardings (docs/reference.md §1.1, §1.8, §2.2–2.3).

Optimizer form: FUNCTIONAL. The trainable `GCDNetwork` (U-Net + camera embedder, §1.8 `ft_strategy:
everything`) is split once into a static graphdef and a FLAT dict {'unet.input_blocks.0...kernel': array}
of its nnx.Param leaves; the train state is the plain pytree

  {'params': flat, 'opt_state': optax state over flat, 'step': int32[], 'rng': uint32[2] (+ 'ema': flat)}

Why not `nnx.Optimizer(model, tx, wrt=nnx.Param)`: a plain dict pytree gets its NamedShardings leaf by leaf
in `jit(in_shardings=..., out_shardings=...)`, Orbax saves/restores it (onto any mesh) with no NNX-specific
handler, `optax.tree_map_params` maps parameter specs onto Adam's moments, and donation of the whole state
is trivially correct. The module is rebuilt inside the step with `nnx.merge` (free at trace time).

Frozen parts (VAE, CLIP; §1.8) are separate flat dicts, FSDP-sharded with the same rules, never
differentiated. `features='in_step'` runs CLIP + VAE encoder in the step (the reference); 'precomputed'
reads 'clip_embeds' [B, T, D], 'concat_latents' and 'target_mean' / 'target_logvar' [B, T, h, w, 4] from
the batch (§1.3 features cached offline; CFG dropout and the posterior sample still happen here).

Randomness is keyed by the GLOBAL example index (batch['idx']) folded into the step key, so a video gets the
same σ, noise, dropout and posterior sample whatever the mesh or process layout (1×4 vs 2×2 devices).

NaN/Inf guard: if the loss or the gradient norm is not finite, the update is NOT applied (state returned
unchanged) and the metrics carry `finite=0` plus a per-leaf non-finite mask; the trainer stops with the
leaf names and never checkpoints that state.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from gcd_jax.diffusion import conditioner as cond_lib
from gcd_jax.diffusion.denoiser import denoise, network_fn_from_unet
from gcd_jax.diffusion.loss import diffusion_loss
from gcd_jax.diffusion.sigmas import training_sigmas
from gcd_jax.models.vae import LOGVAR_MAX, LOGVAR_MIN
from gcd_jax.train import sharding as sh


# ---------------------------------------------------------------------------------------- module <-> flat

@dataclasses.dataclass
class ParamLayout:
  """How a module's nnx.Param leaves map to a flat {name: array} dict and back."""
  graphdef: Any
  treedef: Any
  names: list[str]
  abstract: nnx.State  # nnx.Param state of ShapeDtypeStructs (logical sharding metadata inside)
  rest: Any

  @classmethod
  def of(cls, abstract_module: nnx.Module) -> 'ParamLayout':
    graphdef, params, rest = nnx.split(abstract_module, nnx.Param, ...)
    if jax.tree.leaves(rest):
      raise ValueError(f'{type(abstract_module).__name__} holds non-Param state; the trainer only trains '
                       'and checkpoints nnx.Param leaves')
    names = [sh.flat_name(p) for p, _ in nnx.to_flat_state(params)]
    leaves, treedef = jax.tree.flatten(params)
    if len(leaves) != len(names):
      raise AssertionError('nnx.Param flat state and pytree leaves disagree')
    return cls(graphdef, treedef, names, params, rest)

  def flat(self, module_or_state) -> dict:
    state = module_or_state if isinstance(module_or_state, nnx.State) else nnx.state(module_or_state, nnx.Param)
    return dict(zip(self.names, jax.tree.leaves(state)))

  def module(self, flat: dict) -> nnx.Module:
    state = jax.tree.unflatten(self.treedef, [flat[n] for n in self.names])
    return nnx.merge(self.graphdef, state, self.rest)

  def abstract_flat(self) -> dict:
    return {n: jax.ShapeDtypeStruct(v.shape, v.dtype) for n, v in zip(self.names, jax.tree.leaves(self.abstract))}

  def specs(self, rules, mesh, **kw) -> dict:
    return sh.param_specs(self.abstract, rules, mesh, **kw)


def abstract_module(build: Callable, model_cfg) -> nnx.Module:
  from gcd_jax.models import layers  # pylint: disable=g-import-not-at-top
  return layers.abstract_module(build, model_cfg)


def init_flat(build: Callable, model_cfg, layout: ParamLayout, shardings: dict, seed: int) -> dict:
  """Random init with the modules' own initialisers, run EAGERLY on the host CPU with an RBG key, then placed
  shard by shard (`make_array_from_callback`: each device receives only its slice; works multi-host).

  Why not `jit(init, out_shardings=...)`: XLA:CPU needs ~50 s (threefry: >3 min) to compile the init program
  of even the tiny model, while eager init takes seconds. Real runs start from a converted checkpoint
  (config.init_checkpoint); random init is for tests, the demo and ablations from scratch."""
  try:
    host = jax.local_devices(backend='cpu')[0]
  except RuntimeError:
    host = None
  with jax.default_device(host) if host is not None else contextlib.nullcontext():
    module = build(model_cfg, nnx.Rngs(jax.random.key(seed, impl='unsafe_rbg')))
    values = {n: np.asarray(v) for n, v in layout.flat(module).items()}
  del module
  return {n: jax.make_array_from_callback(v.shape, shardings[n], lambda idx, v=v: v[idx])
          for n, v in values.items()}


# ----------------------------------------------------------------------------------------------- optimizer

def learning_rate_schedule(optim: ml_collections.ConfigDict) -> optax.Schedule:
  """Constant lr (the reference, §3) with an optional linear warmup from 0 and, when optim.decay_steps > 0,
  a cosine decay to lr·final_lr_fraction over the decay_steps after the warm-up (then held there)."""
  decay_steps = int(optim.get('decay_steps', 0))
  after = (optax.cosine_decay_schedule(optim.lr, decay_steps, alpha=float(optim.get('final_lr_fraction', 0.0)))
           if decay_steps > 0 else optax.constant_schedule(optim.lr))
  if optim.warmup_steps > 0:
    return optax.join_schedules([optax.linear_schedule(0.0, optim.lr, optim.warmup_steps), after],
                                [optim.warmup_steps])
  return after


def make_optimizer(optim: ml_collections.ConfigDict) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """torch.optim.Adam(β 0.9/0.999, eps 1e-8, no weight decay) at 2e-5 by default (§3); clipping off."""
  schedule = learning_rate_schedule(optim)
  parts = []
  if optim.grad_clip_norm > 0:
    parts.append(optax.clip_by_global_norm(optim.grad_clip_norm))
  # optax.adam = PyTorch Adam with eps outside the sqrt (eps_root=0), bias-corrected: same update rule.
  parts.append(optax.adam(schedule, b1=optim.b1, b2=optim.b2, eps=optim.eps))
  if optim.weight_decay > 0:
    raise ValueError('weight_decay > 0 is not supported (the reference uses Adam without decay, §3)')
  return optax.chain(*parts), schedule


# ------------------------------------------------------------------------------------------------ the step

def video_keys(step_key: jax.Array, idx: jax.Array) -> jax.Array:
  """One PRNG key per video from its global example index: [B] int → [B, 2] uint32."""
  return jax.vmap(lambda i: jax.random.fold_in(step_key, i))(idx.astype(jnp.uint32))


def _rows(x):
  """[B, T, ...] → [B·T, ...] (frames inner)."""
  return x.reshape((-1,) + x.shape[2:])


def frozen_conditioning(config, vae, clip, batch: dict, keys: jax.Array, num_frames: int):
  """(cond without dropout {'crossattn','concat','vector','camera'}, target latents z [B·T, h, w, 4])."""
  model_cfg = config.model
  b = keys.shape[0]
  k_post = jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys)
  cam_key = cond_lib.camera_key(model_cfg)
  n = b * num_frames
  camera = (jnp.zeros((n, 0), jnp.float32) if cam_key is None else _rows(batch[cam_key]).astype(jnp.float32))
  vector = cond_lib.vector_conditioning({k: _rows(batch[k]) for k in cond_lib.VECTOR_KEYS},
                                        int(model_cfg.unet.addition_time_embed_dim))
  if config.features == 'precomputed':
    crossattn = _rows(batch['clip_embeds']).astype(jnp.float32)[:, None, :]
    concat = _rows(batch['concat_latents']).astype(jnp.float32)
    mean, logvar = batch['target_mean'].astype(jnp.float32), batch['target_logvar'].astype(jnp.float32)
    scaling = float(model_cfg.vae.scaling_factor)
  elif config.features == 'in_step':
    conditioner = cond_lib.Conditioner(model_cfg, vae, clip)
    crossattn = conditioner.clip_embeddings(_rows(batch['cond_frames_without_noise']))
    concat = conditioner.concat_latents(_rows(batch['cond_frames']))
    mean, logvar = vae.encode(_rows(batch['jpg']), use_quant_conv=False)
    mean = mean.astype(jnp.float32).reshape((b, num_frames) + mean.shape[1:])
    logvar = logvar.astype(jnp.float32).reshape(mean.shape)
    scaling = float(vae.scaling_factor)
  else:
    raise ValueError(f"config.features={config.features!r}; use 'in_step' or 'precomputed'")
  # Posterior SAMPLE × scaling_factor, encoder without quant_conv (§1.1, §6 item 4), keyed per video.
  std = jnp.exp(0.5 * jnp.clip(logvar, LOGVAR_MIN, LOGVAR_MAX))
  eps = jax.vmap(lambda k, m: jax.random.normal(k, m.shape, jnp.float32))(k_post, mean)
  z = _rows((mean + std * eps) * scaling)
  cond = dict(crossattn=crossattn, concat=concat, vector=vector, camera=camera)
  return jax.tree.map(jax.lax.stop_gradient, cond), jax.lax.stop_gradient(z)


def per_video_dropout(cond: dict, keys: jax.Array, num_frames: int, rates) -> dict:
  """CFG dropout per frame (§1.6), the key of each video's frames derived from that video's key."""
  out = dict(cond)
  for j, (name, rate) in enumerate((('crossattn', rates.ucg_rate_crossattn), ('concat', rates.ucg_rate_concat))):
    keep = jax.vmap(lambda k: jax.random.bernoulli(jax.random.fold_in(k, 10 + j), 1.0 - rate, (num_frames,)))(keys)
    keep = keep.reshape(-1).astype(cond[name].dtype)
    out[name] = cond[name] * keep.reshape((-1,) + (1,) * (cond[name].ndim - 1))
  return out


def per_video_sigmas_noise(keys: jax.Array, z: jax.Array, num_frames: int, dcfg):
  """σ [B·T] (ln σ ~ N(1, 1.6²), harmonised per video, §2.2) and noise ~ N(0, I) like z, per video."""
  sig = jax.vmap(lambda k: training_sigmas(jax.random.fold_in(k, 2), num_frames, num_frames, dcfg))(keys)
  zv = z.reshape((keys.shape[0], num_frames) + z.shape[1:])
  noise = jax.vmap(lambda k, a: jax.random.normal(jax.random.fold_in(k, 3), a.shape, jnp.float32))(keys, zv)
  return sig.reshape(-1), noise.reshape(z.shape)


def loss_and_grads(config, net_layout: ParamLayout, params: dict, cond: dict, z, sigma, noise, step,
                   num_frames: int, semantic_target=None):
  dcfg = config.diffusion

  def loss_fn(p):
    net = net_layout.module(p)
    c = cond_lib.append_camera(cond, net.embed_camera(cond['camera']))
    fn = lambda x, s: denoise(network_fn_from_unet(net.unet), x, s, c, num_frames, dcfg.sigma_data)  # noqa: E731
    return diffusion_loss(fn, z, sigma, noise, step, dcfg, semantic_target=semantic_target)

  return jax.value_and_grad(loss_fn, has_aux=True)(params)


def make_train_step(config, net_layout: ParamLayout, vae_layout: ParamLayout | None,
                    clip_layout: ParamLayout | None, tx, schedule):
  """→ step_fn(state, frozen, batch) -> (state, metrics). Pure; jit it with `jit_train_step`.

  batch: global arrays [B, T, ...] (+ 'idx' [B]); frozen: {'vae': flat, 'clip': flat} or {} (precomputed)."""
  dcfg = config.diffusion
  semantic = dcfg.loss.pd_person_weight > 1.0 or dcfg.loss.pd_vehicle_weight > 1.0

  def step_fn(state, frozen, batch):
    num_frames = batch['fps_id'].shape[1]
    b = batch['fps_id'].shape[0]
    step = state['step']
    step_key = jax.random.fold_in(jax.random.wrap_key_data(state['rng'], impl='threefry2x32'), step)
    idx = batch['idx'] if 'idx' in batch else jnp.arange(b)
    keys = video_keys(step_key, idx)
    vae = vae_layout.module(frozen['vae']) if config.features == 'in_step' else None
    clip = clip_layout.module(frozen['clip']) if config.features == 'in_step' else None
    cond, z = frozen_conditioning(config, vae, clip, batch, keys, num_frames)
    cond = per_video_dropout(cond, keys, num_frames, dcfg.conditioner)
    sigma, noise = per_video_sigmas_noise(keys, z, num_frames, dcfg)
    sem = _rows(batch['jpg']) if semantic else None
    (loss, aux), grads = loss_and_grads(config, net_layout, state['params'], cond, z, sigma, noise, step,
                                        num_frames, sem)
    grad_norm = optax.global_norm(grads)
    updates, opt_state = tx.update(grads, state['opt_state'], state['params'])
    params = optax.apply_updates(state['params'], updates)
    new = dict(state, params=params, opt_state=opt_state, step=step + 1)
    if 'ema' in state:
      d = config.optim.ema_decay
      new['ema'] = jax.tree.map(lambda e, p: d * e + (1.0 - d) * p, state['ema'], params)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    # Guard: a non-finite step leaves the state untouched (the trainer stops; nothing bad is saved).
    new = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, state)
    metrics = dict(
        loss=loss, grad_norm=grad_norm, lr=schedule(step), cur_top=aux['cur_top'],
        param_norm=optax.global_norm(state['params']), finite=finite,
        nonfinite_grads=jnp.stack([~jnp.all(jnp.isfinite(grads[n])) for n in net_layout.names]),
        sigma_mean=jnp.mean(sigma))
    return new, metrics

  return step_fn


def state_specs(config, net_layout: ParamLayout, tx, mesh) -> tuple[dict, dict]:
  """(abstract train state, PartitionSpec tree) for the config's sharding rules."""
  s = config.sharding
  pspecs = net_layout.specs(dict(s.rules), mesh, fsdp_largest=s.fsdp_largest, min_shard_size=s.min_shard_size)
  abstract_params = net_layout.abstract_flat()
  abstract_opt = jax.eval_shape(tx.init, abstract_params)
  abstract = dict(params=abstract_params, opt_state=abstract_opt,
                  step=jax.ShapeDtypeStruct((), jnp.int32), rng=jax.ShapeDtypeStruct((2,), jnp.uint32))
  from jax.sharding import PartitionSpec as P  # pylint: disable=g-import-not-at-top
  specs = dict(params=pspecs, opt_state=sh.optimizer_specs(tx, abstract_opt, pspecs), step=P(), rng=P())
  if config.optim.ema_decay > 0:
    abstract['ema'] = abstract_params
    specs['ema'] = pspecs
  return abstract, specs


def frozen_specs(config, layouts: dict, mesh) -> dict:
  s = config.sharding
  return {k: l.specs(dict(s.rules), mesh, fsdp_largest=s.fsdp_largest, min_shard_size=s.min_shard_size)
          for k, l in layouts.items()}


def jit_train_step(step_fn, mesh, state_spec_tree, frozen_spec_tree, batch_abstract: dict, *,
                   attention_impl: str = 'auto'):
  """jax.jit with explicit shardings: state/frozen per rules, batch over (data, fsdp), metrics replicated;
  the old state is donated (params and Adam moments are updated in place). attention_impl: the model
  config's `attention` (gcd_jax/models/attention.py), traced with the mesh so that a Pallas kernel runs
  per device over the rows the batch axes give it."""
  from jax.sharding import NamedSharding, PartitionSpec as P  # pylint: disable=g-import-not-at-top
  from gcd_jax.models import attention  # pylint: disable=g-import-not-at-top
  step_fn = attention.with_backend(step_fn, attention.Backend(impl=attention_impl, mesh=mesh,
                                                              row_axes=sh.BATCH_AXES))
  state_sh = sh.named(mesh, state_spec_tree)
  frozen_sh = sh.named(mesh, frozen_spec_tree)
  batch_sh = {k: NamedSharding(mesh, sh.batch_spec(len(v.shape))) for k, v in batch_abstract.items()}
  rep = NamedSharding(mesh, P())
  return jax.jit(step_fn, in_shardings=(state_sh, frozen_sh, batch_sh), out_shardings=(state_sh, rep),
                 donate_argnums=(0,))


def initial_state(config, net_layout, params: dict, tx, state_spec_tree, mesh, seed: int) -> dict:
  """Train state from (sharded) params: Adam moments initialised inside jit onto their shardings."""
  state_sh = sh.named(mesh, state_spec_tree)

  def make(p):
    st = dict(params=p, opt_state=tx.init(p), step=jnp.zeros((), jnp.int32),
              rng=jax.random.key_data(jax.random.key(seed, impl='threefry2x32')).astype(jnp.uint32))
    if config.optim.ema_decay > 0:
      st['ema'] = jax.tree.map(jnp.copy, p)
    return st

  return jax.jit(make, out_shardings=state_sh)(params)


def nonfinite_report(metrics: dict, names: list[str], limit: int = 10) -> str:
  bad = [n for n, f in zip(names, np.asarray(metrics['nonfinite_grads'])) if f]
  return (f'loss={float(metrics["loss"])}, grad_norm={float(metrics["grad_norm"])}; non-finite gradients in '
          f'{len(bad)} leaves: {bad[:limit]}{" ..." if len(bad) > limit else ""}')
