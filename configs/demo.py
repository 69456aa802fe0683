r"""`demo`: the demo model, trained from scratch on this project's procedural scenes in three stages.

  gcd-jax data build procedural_4d --config demo --data-dir D        # 300 scenes at 64×96 (6-16 min, 2 cores)
  gcd-jax train --config configs/demo.py --workdir W1 --config.data.data_dir=D                 # stage 1
  gcd-jax train --config configs/demo.py:stage=2 --workdir W2 --config.data.data_dir=D \
      --config.init_checkpoint=W1                                                              # stage 2
  gcd-jax train --config configs/demo.py:stage=3 --workdir W3 --config.data.data_dir=D \
      --config.init_checkpoint=W2                                                              # stage 3
  gcd-jax train --config configs/demo.py:stage=4 --workdir W4 --config.data.data_dir=D \
      --config.init_checkpoint=W3                                     # stage 4 (measured, not packaged)

The committed demo checkpoint (gcd_jax/assets/demo_model, used by `gcd-jax demo` and by
`GCDPipeline.from_pretrained('demo')`) is W3's raw weights at its last step; docs/demo_model.md has the wall
times, loss curves and evaluation. Stage 1 first fits the VAE (config.vae_fit, gcd_jax/train/vae_fit.py: there
is no pretrained SVD VAE to start from here), writes it to W1/frozen, then trains the camera-conditioned U-Net
with it frozen. Stage 2 continues the stage-1 network (VAE and CLIP frozen, taken from W1) with a fresh Adam and
a learning rate decayed to 0; stage 3 does the same from the stage-2 network, longer.

Choices (docs/demo_model.md says why for each):
* model `demo` (gcd_jax/models/presets.py): 3-level U-Net (32/64/64 channels, 4.8 M parameters), attention at
  the 8×12 and 4×6 latent levels only, tiny 2-level VAE (×2: 32×48 frames → 16×24 latents), 2-layer CLIP;
* data: procedural_4d/demo (280 train / 10 val / 10 test scenes), 6 frames at 32×48, Kubric-4D's gradual
  max90 trajectories (Δazimuth ±90°, Δelevation ±30°, Δradius ±3 m, the camera moves over the clip);
* objective: the reference's (EDM v-prediction, harmonised σ, CFG dropout 0.1), except: ln σ ~ N(0.0, 1.6²)
  (the reference's p_mean=1.0 is for SVD's 72×128 latents; a 16×24 latent is destroyed by less noise), and
  the focal top-k schedule off (focus_top=1.0; no measurable effect at this scale, see docs/demo_model.md);
* optimiser: Adam 5e-4, global-norm clipping 1.0; stage 1: 200 warm-up steps, then constant; stages 2 and
  3: 50 warm-up steps, then a cosine decay to 0 (stage 3 from 4e-4). The state keeps an EMA (0.999), but the
  packaged model is the RAW weights (stage 1's EMA still held 37% of the random init at step 1000; the later
  stages' decay does its job);
* sampler: the reference's (25 Euler steps, σ 700 → 0.002, guidance 1.0 → 1.5 over frames).

Stage 4 grows the stage-3 network by attention at the 16×24 latent level; its new blocks start as the identity
(init_missing + the reference's zero-initialised proj_out). It scored within noise of stage 3 (+0.04 dB held
out), so the packaged model is stage 3's (docs/demo_model.md, "Stage 4").

Arguments: stage=1|2|3|4 (default 1), steps=N (default 1000 for stage 1, 850 for stage 2, 1600 for stages 3-4),
batch=B (default 8).
"""

from __future__ import annotations

import os

from configs.gcd import base_config
from data_pipelines.input_pipeline import data_config
from gcd_jax.config_flags import preset_args
from gcd_jax.diffusion.config import diffusion_config
from gcd_jax.models import presets as models
from gcd_jax.train.vae_fit import vae_fit_config


STAGE_STEPS = {'1': 1000, '2': 850, '3': 1600, '4': 1600}


def get_config(arg: str | None = None):
  a = preset_args(arg, stage='1', steps=0, batch=8)
  if a.stage not in STAGE_STEPS:
    raise ValueError('configs/demo.py: stage=1 (from scratch), stage=2 (from the stage-1 model), stage=3 (from '
                     f'the stage-2 model) or stage=4 (from the stage-3 model), got {a.stage!r}')
  c = base_config()
  c.name = 'demo'
  c.seed = 0
  c.total_steps = a.steps or STAGE_STEPS[a.stage]
  c.batch_size = a.batch
  c.model = models.get_config('demo')  # float32: bf16 convs are slow on XLA:CPU
  c.model.num_frames = 6
  if a.stage == '4':
    # Grows the stage-3 network: spatial + temporal attention also at the 16×24 latent level. The new blocks
    # are absent from the stage-3 model: init_missing starts them fresh, and the reference's zero-initialised
    # proj_out (unet.zero_init) makes each one the identity, so step 0 is exactly the stage-3 model.
    c.model.unet.attention_resolutions = (1, 2, 4)
    c.init_missing = True
  else:
    # Stages 1-3 were trained before this project zero-initialised as the reference does (unet.zero_init).
    c.model.unet.zero_init = False

  c.vae_fit = vae_fit_config()
  c.vae_fit.steps = 1000
  c.vae_fit.lr = 1e-3
  c.vae_fit.kl_weight = 1e-6
  c.vae_fit.batch_size = 2  # videos of 6 frames per step (~1 s per step on 2 cores)
  c.vae_fit.log_every = 50
  c.vae_fit.num_clips = 256  # 2048 clips over 1200 steps underfit (24.3 dB held out vs 25.9 here)

  c.diffusion = diffusion_config()
  c.diffusion.sigma_sampling.p_mean = 0.0
  c.diffusion.loss.focus_top = 1.0  # focal top-k off
  c.diffusion.sampler.num_steps = 25

  c.data = data_config('tiny')
  c.data.builder_config = 'demo'
  c.data.data_dir = os.path.expanduser('~/tensorflow_datasets')
  c.data.height, c.data.width = 32, 48
  c.data.render_height, c.data.render_width = 35, 53
  c.data.num_frames = 6
  c.data.trajectory = 'kubric_gradual_max90'
  c.data.num_threads = 1

  c.optim.lr = 5e-4
  c.optim.warmup_steps = 200
  c.optim.grad_clip_norm = 1.0
  c.optim.ema_decay = 0.999  # kept for longer runs; too slow for 1000 steps (the packaged model is raw)
  if a.stage in ('2', '3', '4'):
    # Continues the previous stage's model (--config.init_checkpoint=its folder: network, VAE and CLIP) with a
    # fresh optimiser: short warm-up, then a cosine decay of the learning rate to 0 over the run (a warm
    # restart). Stage 3 restarts lower, at 4e-4, and runs longer.
    c.optim.warmup_steps = 50
    if a.stage in ('3', '4'):
      c.optim.lr = 4e-4
    c.optim.decay_steps = c.total_steps - c.optim.warmup_steps
    c.optim.final_lr_fraction = 0.0
  c.checkpoint.every_steps = 250
  c.checkpoint.max_to_keep = 2
  c.log_every_steps = 25
  c.preview.every_steps = 0
  c.sharding.min_shard_size = 2 ** 8
  c.peak_tflops_per_device = 0.09  # ~180 GFLOP/s dense matmul on a 2-core CPU, for the MFU figure
  return c
