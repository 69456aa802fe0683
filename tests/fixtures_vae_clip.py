"""Shared helpers for the VAE / CLIP parity tests: randomised PyTorch references and layout helpers."""

from __future__ import annotations

import numpy as np
import torch


def randomise_all_(module: torch.nn.Module, seed: int) -> torch.nn.Module:
  """Randomises EVERY parameter, zero-initialised ones and mix factors included.

  Weights ~ N(0, 1/fan_in) keep activations O(1); 1-D `*.weight` (norm scales) 1 + N(0, 0.2²); other
  1-D tensors (biases, CLIP class embedding) N(0, 0.2²); mix factors N(0, 1) so α = sigmoid(mix) differs
  per block and is far from the 0.5 of the init.
  """
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in module.named_parameters():
      r = torch.randn(p.shape, generator=g)
      if name.endswith('mix_factor'):
        p.copy_(r)
      elif p.ndim == 1:
        p.copy_((1.0 if name.endswith('weight') else 0.0) + 0.2 * r)
      else:
        p.copy_(r / np.sqrt(p[0].numel()))
  return module.eval()


def state_numpy(module: torch.nn.Module) -> dict[str, np.ndarray]:
  """Persistent state as numpy (transformers' position_ids buffer is not persistent in v5)."""
  return {k: v.detach().numpy() for k, v in module.state_dict().items()}


def nhwc(t: torch.Tensor) -> np.ndarray:
  return t.detach().permute(0, 2, 3, 1).numpy()


def nchw(a) -> torch.Tensor:
  return torch.from_numpy(np.ascontiguousarray(np.asarray(a).transpose(0, 3, 1, 2)))


def max_abs(a, b) -> float:
  return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))
