"""The full GCD programs the benchmarks compile and run, built exactly as the commands build them.

* `train_program`: the jitted train step of `gcd-jax train` (gcd_jax/train/train_step.py, sharded by the
  config's rules over the mesh, state donated).
* `sample_program`: `gcd_jax/evaluate/generator.py: sample_videos`, the program of `gcd-jax sample`:
  CLIP + VAE conditioning, the guided Euler loop, VAE decode. Parameters replicated, videos over 'data'.

Each returns (jitted function, abstract arguments): `bench/tpu_compile.py` lowers the abstract arguments for
a TPU topology; `bench/accelerator.py` and `bench/train_memory.py` fill them with random values (`materialise`)
or lower them on the local devices.
"""

from __future__ import annotations

import numpy as np


def train_program(cfg, mesh, batch_per_device: int, t: int, h: int, w: int):
  import jax  # pylint: disable=g-import-not-at-top
  from gcd_jax.train import train_step as ts  # pylint: disable=g-import-not-at-top
  from gcd_jax.train.trainer import train_setup  # pylint: disable=g-import-not-at-top
  (_, _, net_layout, frozen_layouts, tx, schedule, abstract_state, state_specs,
   frozen_specs) = train_setup(cfg, mesh)
  frozen_abstract = {k: l.abstract_flat() for k, l in frozen_layouts.items()}
  b = batch_per_device * mesh.size
  f32, i32, sds = np.float32, np.int32, jax.ShapeDtypeStruct
  batch = dict(fps_id=sds((b, t), i32), motion_bucket_id=sds((b, t), i32), cond_aug=sds((b, t), f32),
               scaled_relative_angles=sds((b, t, 3), f32), scaled_relative_pose=sds((b, t, 3, 4), f32),
               idx=sds((b,), i32), jpg=sds((b, t, h, w, 3), f32))
  if cfg.features == 'in_step':
    batch.update(cond_frames_without_noise=sds((b, t, h, w, 3), f32), cond_frames=sds((b, t, h, w, 3), f32))
  else:
    lat = (b, t, h // 8, w // 8, 4)
    batch.update(clip_embeds=sds((b, t, int(cfg.model.clip.projection_dim)), f32), concat_latents=sds(lat, f32),
                 target_mean=sds(lat, f32), target_logvar=sds(lat, f32))
  step_fn = ts.make_train_step(cfg, net_layout, frozen_layouts.get('vae'), frozen_layouts.get('clip'), tx, schedule)
  jitted = ts.jit_train_step(step_fn, mesh, state_specs, frozen_specs, batch,
                             attention_impl=cfg.model.get('attention', 'auto'))
  return jitted, (abstract_state, frozen_abstract, batch)


def sample_program(cfg, mesh, videos: int, t: int, h: int, w: int, steps: int):
  import jax  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from jax.sharding import NamedSharding, PartitionSpec as P  # pylint: disable=g-import-not-at-top
  from gcd_jax.diffusion.config import diffusion_config  # pylint: disable=g-import-not-at-top
  from gcd_jax.evaluate import generator  # pylint: disable=g-import-not-at-top
  from gcd_jax.models import attention  # pylint: disable=g-import-not-at-top
  from gcd_jax.train import train_step as ts  # pylint: disable=g-import-not-at-top
  from gcd_jax.train.trainer import build_layouts  # pylint: disable=g-import-not-at-top
  builders, _ = build_layouts(cfg)
  modules = tuple(ts.abstract_module(builders[k], cfg.model) for k in ('network', 'vae', 'clip'))
  graphdef, state = nnx.split(modules)
  state = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), state)
  diff = diffusion_config()
  diff.sampler.num_steps = steps
  f32, i32, sds = np.float32, np.int32, jax.ShapeDtypeStruct
  batch = dict(cond_frames_without_noise=sds((videos, t, h, w, 3), f32), cond_frames=sds((videos, t, h, w, 3), f32),
               fps_id=sds((videos, t), i32), motion_bucket_id=sds((videos, t), i32), cond_aug=sds((videos, t), f32),
               scaled_relative_angles=sds((videos, t, 3), f32), scaled_relative_pose=sds((videos, t, 3, 4), f32))
  keys = sds((videos, 1, 2), np.uint32)
  rep, rows = NamedSharding(mesh, P()), NamedSharding(mesh, P('data'))
  backend = attention.Backend(impl=cfg.model.get('attention', 'auto'), mesh=mesh, row_axes=('data',))

  def program(state, batch, keys):
    network, vae, clip = nnx.merge(graphdef, state)
    with attention.use_backend(backend):
      return generator.sample_videos(network, vae, clip, batch, keys, cfg.model, diff)

  jitted = jax.jit(program, in_shardings=(jax.tree.map(lambda _: rep, state), jax.tree.map(lambda _: rows, batch),
                                          rows), out_shardings=rows)
  return jitted, (state, batch, keys)


def unet_step_program(cfg, mesh, videos: int, t: int, h: int, w: int):
  """One guided sampler step's U-Net forward: the doubled batch (2 · videos · t frame rows, uncond + cond) at
  the latent size of h × w frames, parameters replicated, rows over the mesh's 'data' axis. This is the body of
  the sampler's `fori_loop`, which XLA's cost analysis counts once whatever the number of steps."""
  import jax  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from jax.sharding import NamedSharding, PartitionSpec as P  # pylint: disable=g-import-not-at-top
  from gcd_jax.models import attention  # pylint: disable=g-import-not-at-top
  from gcd_jax.models.gcd import build_gcd_network  # pylint: disable=g-import-not-at-top
  from gcd_jax.train import train_step as ts  # pylint: disable=g-import-not-at-top
  graphdef, state = nnx.split(ts.abstract_module(build_gcd_network, cfg.model).unet)
  state = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), state)
  u = cfg.model.unet
  rows = 2 * videos * t
  y_dim = int(u.adm_in_channels) + int(u.get('aux_emb_dim', 0) or 0)  # + the camera embedding
  f32, sds = np.float32, jax.ShapeDtypeStruct
  factor = 2 ** (len(cfg.model.vae.block_out_channels) - 1)  # the VAE's spatial downsampling (8 for SVD's)
  inputs = (sds((rows, h // factor, w // factor, int(u.in_channels)), f32), sds((rows,), f32),
            sds((rows, 1, int(u.context_dim)), f32), sds((rows, y_dim), f32))
  rep, split = NamedSharding(mesh, P()), NamedSharding(mesh, P('data'))
  backend = attention.Backend(impl=cfg.model.get('attention', 'auto'), mesh=mesh, row_axes=('data',))

  def program(params, *inputs):
    with attention.use_backend(backend):
      return nnx.merge(graphdef, params)(*inputs, num_frames=t)

  jitted = jax.jit(program, in_shardings=(jax.tree.map(lambda _: rep, state),) + (split,) * 4, out_shardings=split)
  return jitted, (state, *inputs)


def materialise(abstract, shardings, mode: str, seed: int = 0, fallback=None):
  """Random arrays for abstract arguments, drawn on the host (numpy: no RNG program to compile, which on
  XLA:CPU takes minutes for hundreds of leaves) and placed shard by shard on their devices. The values only
  need realistic ranges.

  mode 'weights': matrices and conv kernels N(0, 1/fan_in), 1-D norm scales 1, other 1-D (biases) 0;
  'inputs': floats N(0, 0.5²), integers 0; 'zeros': zeros (optimiser moments, step, RNG). fallback: the
  sharding of leaves whose sharding is None (a compiled program reports None for unused inputs)."""
  import jax  # pylint: disable=g-import-not-at-top
  leaves, treedef = jax.tree_util.tree_flatten_with_path(abstract)
  sh_leaves = treedef.flatten_up_to(shardings)
  rng = np.random.default_rng(seed)
  out = []
  for (path, a), sharding in zip(leaves, sh_leaves):
    shape, dtype = tuple(a.shape), np.dtype(a.dtype)
    if mode == 'zeros' or not np.issubdtype(dtype, np.floating) and dtype.kind != 'V':
      host = np.zeros(shape, dtype)
    elif mode == 'inputs':
      host = (0.5 * rng.standard_normal(shape, np.float32)).astype(dtype)
    elif len(shape) >= 2:
      host = (rng.standard_normal(shape, np.float32) / np.sqrt(int(np.prod(shape[:-1])))).astype(dtype)
    else:
      host = (np.ones if 'scale' in jax.tree_util.keystr(path) else np.zeros)(shape, dtype)
    out.append(jax.make_array_from_callback(shape, sharding or fallback, lambda idx, host=host: host[idx]))
  return jax.tree_util.tree_unflatten(treedef, out)
