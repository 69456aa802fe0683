"""EDM noise-level schedule for sampling (docs/reference.md §2.4: sgm `EDMDiscretization`)."""

from __future__ import annotations

import numpy as np


def edm_discretization(num_steps: int, sigma_min: float = 0.002, sigma_max: float = 700.0,
                       rho: float = 7.0, append_zero: bool = True) -> np.ndarray:
  """σ_i = (σ_max^{1/ρ} + i/(N−1)·(σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ, i = 0..N−1 (descending), then 0.

  → [N + 1] float32 (numpy: a compile-time constant of the sampler). Computed in float64, then cast.
  """
  if num_steps < 2:
    raise ValueError(f'edm_discretization: num_steps={num_steps} must be ≥ 2 (σ_max and σ_min)')
  if not 0 < sigma_min < sigma_max:
    raise ValueError(f'edm_discretization: need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}')
  ramp = np.linspace(0.0, 1.0, num_steps)
  lo, hi = sigma_min ** (1.0 / rho), sigma_max ** (1.0 / rho)
  sigmas = (hi + ramp * (lo - hi)) ** rho
  if append_zero:
    sigmas = np.append(sigmas, 0.0)
  return sigmas.astype(np.float32)


def guidance_scales(num_frames: int, min_scale: float = 1.0, max_scale: float = 1.5) -> np.ndarray:
  """LinearPredictionGuider per-frame scales linspace(min, max, T) (frame 0 → min; Appendix B) → [T]."""
  return np.linspace(min_scale, max_scale, num_frames).astype(np.float32)
