"""The GCD diffusion formulation (docs/reference.md §1.3–1.7, §2): preconditioning, noise levels,
conditioning, training loss and the jitted EDM sampler. Pure functions + `Conditioner`.

| concept | names |
|---|---|
| presets | `diffusion_config` (sigma sampling, loss, sampler, guider, decode) |
| conditioning (§1.3, §1.6, §1.7) | `Conditioner`, `append_camera`, `unconditional`, `ucg_dropout`, `vector_conditioning` |
| preconditioning (§2.1) | `vscaling_edm_cnoise`, `network_input`, `denoise`, `network_fn_from_unet` |
| training noise (§2.2) | `sample_training_sigmas`, `harmonize_sigmas`, `training_sigmas` |
| loss (§2.3) | `diffusion_loss`, `gcd_loss_per_row`, `edm_weighting`, `focal_top_fraction`, `focal_reduce` |
| sampling (§2.4) | `edm_discretization`, `guidance_scales`, `linear_prediction_guider`, `guided_denoise`, `initial_noise`, `sample_latents`, `decode_latents`, `make_sample_fn` |
"""

from gcd_jax.diffusion.conditioner import (Conditioner, append_camera, ucg_dropout, unconditional,
                                           vector_conditioning)
from gcd_jax.diffusion.config import diffusion_config
from gcd_jax.diffusion.denoiser import denoise, network_fn_from_unet, network_input, vscaling_edm_cnoise
from gcd_jax.diffusion.discretization import edm_discretization, guidance_scales
from gcd_jax.diffusion.loss import diffusion_loss, edm_weighting, focal_reduce, focal_top_fraction, gcd_loss_per_row
from gcd_jax.diffusion.sampler import (decode_latents, guided_denoise, initial_noise, linear_prediction_guider,
                                       make_sample_fn, sample_latents)
from gcd_jax.diffusion.sigmas import harmonize_sigmas, sample_training_sigmas, training_sigmas

__all__ = [
    'Conditioner', 'append_camera', 'decode_latents', 'denoise', 'diffusion_config', 'diffusion_loss',
    'edm_discretization', 'edm_weighting', 'focal_reduce', 'focal_top_fraction', 'gcd_loss_per_row',
    'guidance_scales', 'guided_denoise', 'harmonize_sigmas', 'initial_noise', 'linear_prediction_guider',
    'make_sample_fn', 'network_fn_from_unet', 'network_input', 'sample_latents', 'sample_training_sigmas',
    'training_sigmas', 'ucg_dropout', 'unconditional', 'vector_conditioning', 'vscaling_edm_cnoise',
]
