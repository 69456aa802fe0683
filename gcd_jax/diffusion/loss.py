"""The GCD training loss (docs/reference.md §2.2–2.3: GCD's rewritten `StandardDiffusionLoss.get_loss`).

Composable pieces, all pure and jit/grad friendly:

* `focal_top_fraction(step, cfg)`: the top-fraction schedule 1.0 → focus_top over focus_steps.
* `pd_class_weight_mask(semantic_target, latent_hw, cfg)`: per-latent-element (w_class − 1) weights.
* `gcd_loss_per_row(pred, target, sigma, step, cfg, semantic_target=None) -> [B·T]`: l2 + class bias +
  focal reduction + EDM weighting, exactly §2.3 steps 1–5.
* `diffusion_loss(denoise_fn, z, sigma, noise, step, cfg, semantic_target=None) -> (loss, aux)`:
  x_noisy = z + σ·noise, x̂₀ = denoise_fn(x_noisy, σ), loss = mean over rows (§2.3 step 6).

Training step (inside jax.jit / nnx.value_and_grad; the camera embedding is computed from the trainable
network inside the differentiated function):

  cond = conditioner(batch, key=k_drop)                  # frozen; outside grad
  z = conditioner.encode_target(batch['jpg'], k_post)    # frozen; outside grad
  sigma = training_sigmas(k_sigma, z.shape[0], T, dcfg)
  noise = jax.random.normal(k_noise, z.shape)
  def loss_fn(net):
    c = append_camera(cond, net.embed_camera(cond['camera']))
    fn = lambda x, s: denoise(network_fn_from_unet(net.unet), x, s, c, T, dcfg.sigma_data)
    return diffusion_loss(fn, z, sigma, noise, step, dcfg)
  (loss, aux), grads = nnx.value_and_grad(loss_fn, has_aux=True)(network)
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

# ParallelDomain semantic palette colours (RGB 0..255) re-weighted by the semantic configs (§2.3.1).
PD_PERSON_COLORS = (
    (220, 20, 180),   # Animal
    (64, 64, 64),     # Bicyclist
    (128, 128, 128),  # Motorcyclist
    (192, 192, 192),  # OtherRider
    (220, 20, 60),    # Pedestrian
)
PD_VEHICLE_COLORS = (
    (0, 60, 100),     # Bus
    (0, 0, 142),      # Car
    (0, 0, 90),       # Caravan/RV
    (32, 32, 32),     # ConstructionVehicle
    (119, 11, 32),    # Bicycle
    (0, 0, 230),      # Motorcycle
    (128, 230, 128),  # OwnCar
    (0, 0, 70),       # Truck
    (0, 64, 64),      # WheeledSlow
)


def edm_weighting(sigma: jax.Array, sigma_data: float = 1.0) -> jax.Array:
  """λ(σ) = (σ² + σd²)/(σ·σd)² (sgm `EDMWeighting`; (σ²+1)/σ² for σd = 1). sigma [N] → [N]."""
  sigma = jnp.asarray(sigma, jnp.float32)
  return (sigma ** 2 + sigma_data ** 2) / (sigma * sigma_data) ** 2


def focal_top_fraction(step, focus_top: float, focus_steps: int) -> jax.Array:
  """cur_top = (1 − p) + focus_top·p with p = clip(step / focus_steps, 0, 1) (§2.3.3). step: int or
  traced scalar (optimizer steps, §6 item 6) → float32 scalar. focus_steps ≤ 0 means p = 1 from step 0."""
  if focus_steps <= 0:
    return jnp.float32(focus_top)
  p = jnp.clip(jnp.asarray(step, jnp.float32) / float(focus_steps), 0.0, 1.0)
  return (1.0 - p) + focus_top * p


def pd_class_weight_mask(semantic_target: jax.Array, latent_hw: tuple[int, int], cfg) -> jax.Array:
  """Σ_classes mask_latent·(w_class − 1) (§2.3.1).

  semantic_target: [B·T, H, W, 3] target semantic-colour video in [-1, 1] (batch['jpg'] of the PD
  semantic configs). Pixel mask = mean_channels |jpg − (c/127.5 − 1)| < threshold, area-downsampled
  (mean over each (H/h)×(W/w) block, 8×8 for the SVD VAE) to the latent grid → [B·T, h, w, 1] float32.
  """
  lc = cfg.loss
  n, hh, ww, c = semantic_target.shape
  h, w = latent_hw
  if c != 3 or hh % h or ww % w:
    raise ValueError(f'pd_class_weight_mask: semantic target {semantic_target.shape} must be [B·T, H, W, 3] '
                     f'with H, W multiples of the latent size {latent_hw}')
  x = semantic_target.astype(jnp.float32)
  out = jnp.zeros((n, h, w, 1), jnp.float32)
  for colors, weight in ((PD_PERSON_COLORS, lc.pd_person_weight), (PD_VEHICLE_COLORS, lc.pd_vehicle_weight)):
    if weight <= 1.0:
      continue  # the reference only re-weights when a weight exceeds 1
    for col in colors:
      ref = jnp.asarray(np.asarray(col, np.float32) / 127.5 - 1.0)
      pix = (jnp.mean(jnp.abs(x - ref), axis=-1) < lc.pd_color_threshold).astype(jnp.float32)
      lat = pix.reshape(n, h, hh // h, w, ww // w).mean(axis=(2, 4))
      out = out + lat[..., None] * (weight - 1.0)
  return out


def _uses_class_weights(cfg) -> bool:
  return cfg.loss.pd_person_weight > 1.0 or cfg.loss.pd_vehicle_weight > 1.0


def focal_reduce(loss_all: jax.Array, cur_top: jax.Array, top_weight: float = 0.9) -> jax.Array:
  """Per row: if cur_top < 1, 0.9·mean(top-k) + 0.1·mean with k = int(C·H·W·cur_top) (truncation),
  else the plain mean. loss_all [N, ...] → [N]. k is data-independent but may be traced (the step is a
  jit argument), so top-k is a full descending sort + masked mean instead of `lax.top_k`."""
  n = loss_all.shape[0]
  flat = loss_all.reshape(n, -1)
  m = flat.shape[1]
  mean_all = flat.mean(axis=1)
  k = jnp.floor(m * cur_top).astype(jnp.int32)
  k_safe = jnp.maximum(k, 1)  # the reference would take mean([]) = nan for k = 0; never reached (focus_top ≥ 1/m)
  ordered = -jnp.sort(-flat, axis=1)
  keep = jnp.arange(m)[None, :] < k_safe
  top_mean = jnp.sum(jnp.where(keep, ordered, 0.0), axis=1) / k_safe.astype(jnp.float32)
  focal = top_weight * top_mean + (1.0 - top_weight) * mean_all
  return jnp.where(cur_top < 1.0, focal, mean_all)


def gcd_loss_per_row(pred: jax.Array, target: jax.Array, sigma: jax.Array, step, cfg,
                     semantic_target: jax.Array | None = None) -> jax.Array:
  """§2.3 steps 1–5. pred (x̂₀), target (z): [B·T, h, w, C]; sigma [B·T]; step: optimizer step → [B·T]."""
  lc = cfg.loss
  if lc.type != 'l2':
    raise ValueError(f'loss type {lc.type!r} is not supported; GCD trains with l2')
  loss_raw = jnp.square(pred.astype(jnp.float32) - target.astype(jnp.float32))
  n = loss_raw.shape[0]
  if _uses_class_weights(cfg):
    if semantic_target is None:
      raise ValueError('pd_person_weight/pd_vehicle_weight > 1 need the semantic target video: pass '
                       "semantic_target=batch['jpg'] (the PD semantic-colour frames)")
    loss_bias = loss_raw * pd_class_weight_mask(semantic_target, loss_raw.shape[1:3], cfg)
  else:
    loss_bias = jnp.zeros_like(loss_raw)
  loss_bias_mean = loss_bias.reshape(n, -1).mean(axis=1)
  # Half of the class bias goes through the focal reduction, half is added after it (§6 item 6).
  loss_all = loss_raw + 0.5 * loss_bias
  cur_top = focal_top_fraction(step, lc.focus_top, lc.focus_steps)
  loss_focal = focal_reduce(loss_all, cur_top, lc.focal_top_weight)
  loss_final = loss_focal + 0.5 * loss_bias_mean
  # λ(σ) multiplies the already-reduced per-row loss (§6 item 6).
  return loss_final * edm_weighting(sigma, cfg.sigma_data)


def diffusion_loss(denoise_fn: Callable[[jax.Array, jax.Array], jax.Array], z: jax.Array,
                   sigma: jax.Array, noise: jax.Array, step, cfg,
                   semantic_target: jax.Array | None = None) -> tuple[jax.Array, dict]:
  """z [B·T, h, w, 4] target latents (×scaling_factor), sigma [B·T], noise like z (N(0, I)), step:
  optimizer step (int or traced scalar). denoise_fn(x_noisy, sigma) → x̂₀ (e.g. `denoise` closed over
  the network and the conditioning). → (scalar mean loss, {'loss_per_row' [B·T], 'sigma', 'cur_top'})."""
  x_noisy = z + noise * sigma.reshape((-1,) + (1,) * (z.ndim - 1))
  pred = denoise_fn(x_noisy, sigma)
  per_row = gcd_loss_per_row(pred, z, sigma, step, cfg, semantic_target)
  cur_top = focal_top_fraction(step, cfg.loss.focus_top, cfg.loss.focus_steps)
  return per_row.mean(), dict(loss_per_row=per_row, sigma=sigma, cur_top=cur_top)
