r"""GCD training presets (docs/reference.md §3), big_vision style.

  gcd-jax train --config configs/gcd.py:data=kubric,traj=gradual,az=90 --workdir /ckpt/gcd_kubric_g90 \
      --config.init_checkpoint=/ckpt/svd_converted
  gcd-jax train --config configs/gcd.py:data=pardom,modality=semantic --workdir W --config.optim.lr=1e-5

Arguments (comma separated):
  data=kubric|pardom|procedural   traj=gradual|direct (Kubric; PD is always gradual, sine)
  az=90|180 (Kubric max90 / max180)   modality=rgb|semantic (PD)   features=in_step|precomputed
Kubric models use the spherical camera embedder (`gcd`), PD models none (`svd`, §3 "no camera conditioning").

Reference hyper-parameters: Adam 2e-5 (β 0.9/0.999, eps 1e-8, no wd, no schedule), no clipping, no EMA,
gradient checkpointing, 14 frames at 256×384, 28 videos per step (4 per GPU × 7 GPUs), checkpoints every
1250 steps (§3). Here: bfloat16 compute with float32 master weights, FSDP over all devices, remat 'full'.
On v5p (95 GiB/chip), `--config.model.remat=none` with 8-9 videos per chip is faster per video (MFU ceiling
73-74 % vs 58 % for remat 'full' at 12 videos, by the TPU compiler; docs/performance.md).
"""

from __future__ import annotations

import ml_collections

from data_pipelines.input_pipeline import data_config
from gcd_jax.config_flags import preset_args
from gcd_jax.diffusion.config import diffusion_config
from gcd_jax.models import presets as models


def base_config() -> ml_collections.ConfigDict:
  """Fields every preset sets (tiny.py starts from here too)."""
  c = ml_collections.ConfigDict()
  c.seed = 1234  # reference default (--seed=1234)
  c.total_steps = 100_000
  c.batch_size = 28  # GLOBAL videos per step (reference: 4 per GPU × 7 GPUs)
  c.features = 'in_step'  # 'in_step' (CLIP + VAE encoder run in the step) | 'precomputed'
  c.init_checkpoint = ''  # `gcd-jax convert` output (SVD or GCD); '' = random init
  c.resume_with_changes = False  # resuming a workdir with a different config is refused unless True
  c.init_missing = True  # camera layers absent from an SVD checkpoint are initialised fresh

  # shape: the mesh of one slice (-1: the remaining devices). dcn_shape: how the axes span TPU slices in a
  # multi-slice job (e.g. (2, 1, 1): data parallel across 2 slices over DCN, FSDP within each slice over ICI).
  c.mesh = ml_collections.ConfigDict(dict(shape=(1, -1, 1), axes=('data', 'fsdp', 'tensor'), dcn_shape=(1, 1, 1)))
  c.sharding = ml_collections.ConfigDict(dict(
      rules=(('embed', 'fsdp'), ('mlp', 'tensor'), ('norm', None)),
      fsdp_largest=True,  # 'fsdp' moves to each kernel's largest evenly divisible dim
      min_shard_size=2 ** 12,  # smaller leaves (biases, norms) are replicated
  ))
  c.optim = ml_collections.ConfigDict(dict(
      lr=2e-5, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0, warmup_steps=0, grad_clip_norm=0.0,
      ema_decay=0.0,  # EMA off, as GCD ("all without EMA")
      decay_steps=0, final_lr_fraction=0.0))  # > 0: cosine decay after warm-up (the reference: constant)
  c.checkpoint = ml_collections.ConfigDict(dict(every_steps=1250, max_to_keep=0, async_save=True))  # 0: keep all
  c.log_every_steps = 50
  c.profile = ml_collections.ConfigDict(dict(start_step=-1, num_steps=5))  # -1: no trace
  c.preview = ml_collections.ConfigDict(dict(every_steps=0, num_steps=25, split='val'))  # 0: no previews
  c.peak_tflops_per_device = 197.0  # TPU v5e bf16; sets MFU (H100 SXM: 989)
  return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = preset_args(arg, data='kubric', traj='gradual', az='90', modality='rgb', features='in_step')
  c = base_config()
  c.features = a.features
  if a.data in ('kubric', 'procedural'):
    if a.traj not in ('gradual', 'direct') or a.az not in ('90', '180'):
      raise ValueError(f'Kubric presets: traj=gradual|direct, az=90|180 (got {a.traj}, {a.az})')
    c.model = models.get_config('gcd,dtype=bfloat16,remat=full')
    c.data = data_config(a.data)
    c.data.trajectory = f'kubric_{a.traj}_max{a.az}'
    c.diffusion = diffusion_config()
    c.name = f'{a.data}_{a.traj}_max{a.az}'
  elif a.data == 'pardom':
    if a.modality not in ('rgb', 'semantic'):
      raise ValueError(f'ParallelDomain presets: modality=rgb|semantic (got {a.modality})')
    c.model = models.get_config('svd,dtype=bfloat16,remat=full')
    c.data = data_config('pardom')
    c.data.output_modality = a.modality
    c.diffusion = diffusion_config('semantic' if a.modality == 'semantic' else None)
    c.name = f'pardom_{a.modality}'
  else:
    raise ValueError(f'data={a.data!r}; choose kubric, pardom or procedural')
  c.diffusion.loss.focus_steps = 5000
  return c
