"""Shared helpers for the U-Net tests: randomised diffusers reference models and per-row inputs."""

from __future__ import annotations

import numpy as np
import torch

from gcd_jax.convert.diffusers import diffusers_unet_config


def randomise_(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
  """Randomises EVERY parameter (norm scales/biases, mix factors, zero-init convs included).

  Weights ~ N(0, 1/fan_in) keep activations O(1) through the tiny U-Net; norm scales 1 + N(0, 0.2²);
  biases N(0, 0.2²); mix factors N(0, 1) so α = sigmoid(mix) differs per block.
  """
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in module.named_parameters():
      r = torch.randn(p.shape, generator=g)
      if name.endswith('mix_factor'):
        p.copy_(r)
      elif p.ndim == 1:
        is_scale = name.endswith('weight')  # 1-D weights are GroupNorm / LayerNorm scales
        p.copy_((1.0 if is_scale else 0.0) + 0.2 * r)
      else:
        p.copy_(r / np.sqrt(p[0].numel()))
  return module


def diffusers_unet(cfg, seed: int = 0):
  from diffusers import UNetSpatioTemporalConditionModel  # pylint: disable=g-import-not-at-top
  return randomise_(UNetSpatioTemporalConditionModel(**diffusers_unet_config(cfg)), seed).eval()


def numpy_state(module: torch.nn.Module, prefix: str = '') -> dict[str, np.ndarray]:
  return {prefix + k: v.detach().numpy() for k, v in module.state_dict().items()}
