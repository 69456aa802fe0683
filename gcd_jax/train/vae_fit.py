"""Fit a small temporal VAE from scratch, for models trained without SVD's pretrained autoencoder.

GCD fine-tunes SVD, whose VAE is pretrained and frozen (sgm `DiffusionEngine`: `first_stage_model` frozen). A model trained here from random
weights (the tiny / demo presets, no download) has no such VAE, and a random decoder turns any latent into
noise. `config.vae_fit.steps > 0` makes the trainer fit the VAE on the training frames first, then freeze it
for the diffusion run, exactly as the reference freezes SVD's.

What is fitted is what GCD uses (docs/decisions.md, "VAE"):
* the TARGET path: encoder WITHOUT quant_conv → posterior sample → temporal decoder (`decode(z / sf)`) must
  reconstruct the frame, since that is what the sampler decodes;
* `quant_conv` is held at the identity, so the CONDITIONING path (encoder → quant_conv → mode) gives the same
  latents as the target path's mean (unscaled, as SVD's concat latents);
* the latent scale is then normalised exactly (a reparametrisation, not a retrain): the encoder's mean
  channels are multiplied by a and the decoder's first conv divided by a, with a chosen so that the target
  latents (× scaling_factor) have unit standard deviation = σ_data of the EDM preconditioning. SD/SVD
  measured their 0.18215 the same way; here the factor stays in the config and the weights move.

Loss: mean squared error + kl_weight · mean KL(q(z|x) || N(0, I)) (SD's KL autoencoder without the GAN and
LPIPS terms, which a 32×48 demo does not need); Adam, constant lr then a cosine decay over the second half.
"""

from __future__ import annotations

import math
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from gcd_jax.models.vae import build_vae


def vae_fit_config() -> ml_collections.ConfigDict:
  """`config.vae_fit`: steps 0 disables the fit (the VAE comes from init_checkpoint or is random)."""
  return ml_collections.ConfigDict(dict(steps=0, lr=1e-3, kl_weight=1e-6, batch_size=8, num_clips=256,
                                         log_every=100))


def set_identity_quant_conv(vae) -> None:
  c = vae.quant_conv.kernel.value.shape[-1]
  vae.quant_conv.kernel.value = jnp.eye(c, dtype=vae.quant_conv.kernel.value.dtype).reshape(1, 1, c, c)
  vae.quant_conv.bias.value = jnp.zeros_like(vae.quant_conv.bias.value)


def init_small_posterior(vae, logvar: float = -10.0) -> None:
  """Start the posterior's log-variance at `logvar` (σ ≈ 0.007) instead of ~0: a random encoder's σ ≈ 1
  drowns the latent in noise, and with a tiny KL weight the decoder then spends most of the fit learning to
  ignore it. The sample stays a sample (the diffusion target uses it, sgm `DiffusionEngine.shared_step`: encode_first_stage samples the posterior)."""
  conv = vae.encoder.conv_out
  c = conv.kernel.value.shape[-1] // 2
  conv.kernel.value = conv.kernel.value.at[..., c:].set(0.0)
  conv.bias.value = conv.bias.value.at[c:].set(logvar)


def rescale_latents(vae, a: float) -> None:
  """Exact reparametrisation: encoder mean ×a (logvar + 2 ln a, so the posterior sample scales too) and
  decoder conv_in ÷a. decode(a·z) after this equals decode(z) before; encode gives a× the old latents."""
  conv = vae.encoder.conv_out
  c = conv.kernel.value.shape[-1] // 2
  conv.kernel.value = conv.kernel.value.at[..., :c].multiply(a)
  conv.bias.value = conv.bias.value.at[:c].multiply(a).at[c:].add(2.0 * math.log(a))
  vae.decoder.conv_in.kernel.value = vae.decoder.conv_in.kernel.value / a


def _recon(vae, x, key, num_frames):
  mean, logvar = vae.encode(x, use_quant_conv=False)
  z = mean if key is None else mean + jnp.exp(0.5 * logvar) * jax.random.normal(key, mean.shape)
  return vae.decode(z, num_frames=num_frames), mean, logvar


def psnr01(recon, x) -> jax.Array:
  """PSNR (dB) of reconstructions vs frames, both in [-1, 1], measured in [0, 1] after clipping."""
  y = jnp.clip((recon + 1.0) / 2.0, 0.0, 1.0)
  return -10.0 * jnp.log10(jnp.mean(jnp.square(y - (x + 1.0) / 2.0)))


def fit_vae(model_cfg, clips: np.ndarray, held_out: np.ndarray, fit_cfg, *, seed: int, log=print):
  """clips: [N, T, H, W, 3] training videos in [-1, 1] (re-sampled each step); held_out: [M, T, H, W, 3].
  → (fitted VAE, stats dict: psnr before/after on held_out, latent std before normalisation, scale a)."""
  t = int(model_cfg.num_frames)
  if clips.shape[1] != t or held_out.shape[1] != t:
    raise ValueError(f'fit_vae: clips must have num_frames={t} frames, got {clips.shape} / {held_out.shape}')
  vae = build_vae(model_cfg, nnx.Rngs(seed))
  set_identity_quant_conv(vae)
  init_small_posterior(vae)
  trainable = nnx.All(nnx.Param, nnx.Not(nnx.PathContains('quant_conv')))
  # Constant lr, then a cosine decay over the last half: the end of the fit averages out batch noise.
  steps = int(fit_cfg.steps)
  schedule = optax.join_schedules([optax.constant_schedule(fit_cfg.lr),
                                   optax.cosine_decay_schedule(fit_cfg.lr, steps - steps // 2, alpha=0.01)],
                                  [steps // 2])
  opt = nnx.Optimizer(vae, optax.adam(schedule), wrt=trainable)
  kl_weight = float(fit_cfg.kl_weight)

  @nnx.jit
  def step(model, opt, x, key):
    def loss_fn(m):
      y, mean, logvar = _recon(m, x, key, t)
      kl = 0.5 * jnp.mean(jnp.square(mean) + jnp.exp(logvar) - 1.0 - logvar)
      return jnp.mean(jnp.square(y - x)) + kl_weight * kl
    loss, grads = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, trainable))(model)
    opt.update(model, grads)
    return loss

  @nnx.jit
  def evaluate(model, x):
    y, mean, _ = _recon(model, x, None, t)
    return psnr01(y, x), jnp.std(mean)

  rows = lambda v: jnp.asarray(v.reshape((-1,) + v.shape[2:]))  # noqa: E731  [N, T, ...] → [N·T, ...]
  held = rows(held_out)
  before = float(evaluate(vae, held)[0])
  rng = np.random.default_rng(seed)
  key = jax.random.key(seed)
  bsz = min(int(fit_cfg.batch_size), len(clips))
  t0 = time.perf_counter()
  log(f'[vae fit] compiling the VAE fit step ({fit_cfg.steps} steps, {bsz} videos × {t} frames per step)')
  for i in range(int(fit_cfg.steps)):
    loss = step(vae, opt, rows(clips[rng.choice(len(clips), bsz, replace=False)]), jax.random.fold_in(key, i))
    if (i + 1) % int(fit_cfg.log_every) == 0 or i + 1 == fit_cfg.steps:
      log(f'[vae fit] step {i + 1}/{fit_cfg.steps}: loss {float(loss):.5f} '
          f'({time.perf_counter() - t0:.0f}s)')
  after, latent_std = (float(v) for v in evaluate(vae, held))
  a = 1.0 / (latent_std * float(model_cfg.vae.scaling_factor))
  rescale_latents(vae, a)
  after_rescale, std_rescaled = (float(v) for v in evaluate(vae, held))
  stats = dict(steps=int(fit_cfg.steps), psnr_before=round(before, 3), psnr_after=round(after_rescale, 3),
               latent_std_fitted=round(latent_std, 5), rescale=round(a, 5),
               target_latent_std=round(std_rescaled * float(model_cfg.vae.scaling_factor), 4),
               seconds=round(time.perf_counter() - t0, 1))
  log(f'[vae fit] held-out reconstruction PSNR {before:.2f} -> {after_rescale:.2f} dB; target latents rescaled '
      f'by {a:.4f} to std {stats["target_latent_std"]}')
  return vae, stats
