r"""`tiny`: the whole GCD training job on a laptop CPU in seconds (big_vision's `runlocal`).

  gcd-jax train --config configs/tiny.py --workdir /tmp/gcd_tiny
  gcd-jax train --config configs/tiny.py:steps=40,batch=4 --workdir /tmp/gcd_tiny --config.optim.lr=1e-3

Tiny model (configs/models.py `tiny`: 2-level U-Net, tiny VAE/CLIP, spherical camera path on), tiny procedural
dataset (TFDS `procedural_4d/tiny`, built on first use under data.data_dir), 3 frames at 32×48 pixels
(4×6 latents), FSDP over all local devices. Expected: the loss logged every step, a checkpoint every 10
steps under W/checkpoints, TensorBoard events in W/tb. `gcd-jax demo` runs this config end to end.

Arguments: steps=N, batch=B (global videos per step), data=procedural|synthetic (synthetic = seeded
random videos, no dataset build: the trainer/resume tests), frames=T, lr=X.
"""

from __future__ import annotations

import os

from configs.gcd import base_config
from data_pipelines.input_pipeline import data_config
from gcd_jax.config_flags import preset_args
from gcd_jax.diffusion.config import diffusion_config
from gcd_jax.models import presets as models


def get_config(arg: str | None = None):
  a = preset_args(arg, steps=30, batch=8, data='procedural', frames=3, lr=3e-4)
  c = base_config()
  c.name = 'tiny'
  c.seed = 0
  c.total_steps = a.steps
  c.batch_size = a.batch
  c.model = models.get_config('tiny')  # float32 on CPU: bf16 convs are slow on XLA:CPU
  c.diffusion = diffusion_config()
  c.diffusion.loss.focus_steps = 20  # exercise the focal schedule within a short run
  c.diffusion.sampler.num_steps = 10
  c.data = data_config('tiny')
  c.data.source = a.data if a.data == 'synthetic' else 'tfds'
  c.data.data_dir = os.path.expanduser('~/tensorflow_datasets')
  c.data.height, c.data.width = 32, 48
  c.data.render_height, c.data.render_width = 35, 53
  c.data.num_frames = a.frames
  c.data.trajectory = 'kubric_gradual_max90'
  c.model.num_frames = a.frames
  c.optim.lr = a.lr  # far above the reference 2e-5: a few steps must visibly fit
  c.checkpoint.every_steps = 10
  c.checkpoint.max_to_keep = 3
  c.log_every_steps = 1
  c.preview.every_steps = 0
  c.sharding.min_shard_size = 2 ** 8
  c.peak_tflops_per_device = 0.09  # ~180 GFLOP/s dense matmul on this 2-core CPU (docs/dependencies.md), for MFU
  return c
