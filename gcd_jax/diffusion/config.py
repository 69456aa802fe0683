"""Hyper-parameters of the GCD diffusion objective and sampler (docs/reference.md §2), one `ConfigDict`.

  from gcd_jax.diffusion.config import diffusion_config
  cfg = diffusion_config()            # the reference defaults (Kubric/PD RGB models)
  cfg = diffusion_config('semantic')  # ParallelDomain semantic models: class re-weighting 7 / 3
  cfg = diffusion_config('preview')   # training-time preview sampling: guider max_scale 2.5

The training helper reads `cfg.loss`, `cfg.sigma_sampling`, `cfg.conditioner`; the evaluation helper
reads `cfg.sampler`, `cfg.guider`, `cfg.decode`.
"""

from __future__ import annotations

import ml_collections


def diffusion_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """arg: None | 'semantic' | 'preview' (comma separated for both)."""
  cfg = ml_collections.ConfigDict(dict(
      # σ_data of the VScalingWithEDMcNoise preconditioning and the EDM loss weighting (§2.1, §2.3.5).
      sigma_data=1.0,
      sigma_sampling=dict(
          p_mean=1.0,  # ln σ ~ N(p_mean, p_std²) (EDMSampling, §2.2)
          p_std=1.6,
          harmonize=True,  # one σ per video = frame 0's (§2.2, §6 item 5)
      ),
      loss=dict(
          type='l2',
          focus_top=0.1,  # focal top-fraction reached after focus_steps optimizer steps (§2.3.3)
          focus_steps=5000,
          focal_top_weight=0.9,  # loss_focal = 0.9·mean(top-k) + 0.1·mean (§2.3.3)
          # ParallelDomain semantic re-weighting (§2.3.1); 1.0 disables (RGB configs).
          pd_person_weight=1.0,
          pd_vehicle_weight=1.0,
          pd_color_threshold=0.02,  # mean_channels |jpg − c'| < 0.02 selects a class pixel
      ),
      conditioner=dict(
          # Classifier-free-guidance dropout rates, per row = per frame, independent (§1.6, §6 item 1).
          ucg_rate_crossattn=0.1,
          ucg_rate_concat=0.1,
      ),
      sampler=dict(
          num_steps=25,
          sigma_min=0.002,
          sigma_max=700.0,
          rho=7.0,
          s_churn=0.0,
          s_tmin=0.0,
          s_tmax=float('inf'),
          s_noise=1.0,
      ),
      guider=dict(min_scale=1.0, max_scale=1.5),  # LinearPredictionGuider (§2.4, Appendix B)
      decode=dict(chunk_size=14),  # frames decoded together (`--decoding_t`, §1.3, §6 item 20)
  ))
  for opt in [o for o in (arg or '').split(',') if o]:
    if opt == 'semantic':
      cfg.loss.pd_person_weight = 7.0
      cfg.loss.pd_vehicle_weight = 3.0
    elif opt == 'preview':
      cfg.guider.max_scale = 2.5
    else:
      raise ValueError(f'unknown diffusion config option {opt!r}; options are semantic, preview')
  return cfg
