"""Random-weight model checkpoints for tests and benchmarks (no training, no download)."""

from __future__ import annotations

import jax
import numpy as np


def random_params(abstract_pure: dict, seed: int) -> dict:
  """Seeded random parameters for an abstract parameter tree, built in NumPy (no module construction:
  eager init dispatches hundreds of small ops). Kernels / embeddings ~ N(0, 1/fan_in), norm scales 1,
  biases 0, other leaves (mix factors) N(0, 0.02). For smoke runs, benchmarks and tests."""
  rng = np.random.default_rng(seed)

  def leaf(path, a):
    name = str(getattr(path[-1], 'key', path[-1]))
    if name == 'scale':
      return np.ones(a.shape, np.float32)
    if name == 'bias':
      return np.zeros(a.shape, np.float32)
    if name in ('kernel', 'embedding') and len(a.shape) >= 2:
      return (rng.standard_normal(a.shape, np.float32) / np.sqrt(np.prod(a.shape[:-1]))).astype(np.float32)
    return (0.02 * rng.standard_normal(a.shape, np.float32)).astype(np.float32)

  return jax.tree_util.tree_map_with_path(leaf, abstract_pure)


def write_random_checkpoint(out_dir: str, model_cfg, seed: int = 0) -> str:
  """A gcd-jax model checkpoint with random weights (random_params) for `model_cfg`."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from gcd_jax.convert import checkpoint_io  # pylint: disable=g-import-not-at-top
  states = []
  for i, comp in enumerate(checkpoint_io.COMPONENTS):
    pure = nnx.state(checkpoint_io.abstract_module(model_cfg, comp), nnx.Param).to_pure_dict()
    pure = jax.tree.map(lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype), pure)
    states.append(random_params(pure, seed=seed * 3 + i))
  return checkpoint_io.save_model_checkpoint(out_dir, *states, model_cfg,
                                             meta={'source': {'kind': 'random', 'seed': seed}})
