"""Shared helpers for the VAE / CLIP parity tests: randomised PyTorch references and layout helpers."""

from __future__ import annotations

import numpy as np
import torch

from tests.fixtures_unet import randomise_


def randomise_all_(module: torch.nn.Module, seed: int) -> torch.nn.Module:
  """Every parameter random, as `fixtures_unet.randomise_` (1-D `*.weight` norm scales 1 + N(0, 0.2²), other
  1-D tensors such as biases and CLIP's class embedding N(0, 0.2²)), in eval mode."""
  return randomise_(module, seed).eval()


def state_numpy(module: torch.nn.Module) -> dict[str, np.ndarray]:
  """Persistent state as numpy (transformers' position_ids buffer is not persistent in v5)."""
  return {k: v.detach().numpy() for k, v in module.state_dict().items()}


def nhwc(t: torch.Tensor) -> np.ndarray:
  return t.detach().permute(0, 2, 3, 1).numpy()


def nchw(a) -> torch.Tensor:
  return torch.from_numpy(np.ascontiguousarray(np.asarray(a).transpose(0, 3, 1, 2)))


def max_abs(a, b) -> float:
  return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))
