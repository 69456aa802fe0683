"""LPIPS (Zhang et al. 2018, `lpips` package v0.1) in JAX/Flax NNX: VGG16 and AlexNet trunks.

    d(x0, x1) = Σ_l mean_hw( w_l · (f̂_l(x0) − f̂_l(x1))² ),   f̂ = f / (‖f‖_channels + 1e-10)

with f_l the trunk activations after relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 (VGG16) or relu1..relu5
(AlexNet) of torchvision's `.features` stack, on inputs in [-1, 1] first shifted/scaled by the lpips
`ScalingLayer` (shift (−.030, −.088, −.188), scale (.458, .448, .450)). `w_l` are the learned 1×1
no-bias "linear" heads (`lin{l}.model.1.weight`).

Weights (nothing is downloaded):
* trunk: a torchvision state dict (`vgg16-397923af.pth`, `alexnet-owt-7be5be79.pth`, keys
  `features.N.weight/bias`); found at the given path or under `$TORCH_HOME/hub/checkpoints/`
  (default `~/.cache/torch/hub/checkpoints/`). `.npz` / `.safetensors` files with the same keys work
  without PyTorch.
* heads: the `lpips` package's shipped `lpips/weights/v0.1/{vgg,alex}.pth` (found without importing
  `lpips`, whose import needs torchvision), or an explicit path.
Reading `.pth` files needs PyTorch (CPU is enough).

Inputs are channels-last `[N, H, W, 3]` in [-1, 1] (`normalize=True` for [0, 1]); the result is `[N]`.
"""

from __future__ import annotations

import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gcd_jax.models import layers

# torchvision `.features` layouts: (index, kind, args). 'conv' args = (in, out, kernel, stride, pad);
# 'pool' args = (kernel, stride). ReLU follows every conv.
_VGG16 = [(0, 3, 64), (2, 64, 64), 'pool', (5, 64, 128), (7, 128, 128), 'pool', (10, 128, 256),
          (12, 256, 256), (14, 256, 256), 'pool', (17, 256, 512), (19, 512, 512), (21, 512, 512), 'pool',
          (24, 512, 512), (26, 512, 512), (28, 512, 512)]
NETS = {
    # conv layers: torchvision index → (in, out, kernel, stride, pad); taps = indices of the ReLUs whose
    # outputs LPIPS compares (end of lpips' slice1..slice5); pools: index → (kernel, stride).
    'vgg': dict(
        convs={i: (cin, cout, 3, 1, 1) for (i, cin, cout) in [c for c in _VGG16 if c != 'pool']},
        pools={4: (2, 2), 9: (2, 2), 16: (2, 2), 23: (2, 2)},
        taps=(3, 8, 15, 22, 29), channels=(64, 128, 256, 512, 512),
        torchvision_file='vgg16-397923af.pth', heads_file='vgg.pth'),
    'alex': dict(
        convs={0: (3, 64, 11, 4, 2), 3: (64, 192, 5, 1, 2), 6: (192, 384, 3, 1, 1),
               8: (384, 256, 3, 1, 1), 10: (256, 256, 3, 1, 1)},
        pools={2: (3, 2), 5: (3, 2)},
        taps=(1, 4, 7, 9, 11), channels=(64, 192, 384, 256, 256),
        torchvision_file='alexnet-owt-7be5be79.pth', heads_file='alex.pth'),
}
SHIFT = (-.030, -.088, -.188)
SCALE = (.458, .448, .450)


class LPIPSWeightsError(FileNotFoundError):
  """A missing or malformed LPIPS weight file."""


class LPIPS(nnx.Module):
  """LPIPS distance. `features[k]` are the trunk convs in torchvision order, `lins[l]` the heads."""

  def __init__(self, net: str = 'vgg', *, rngs: nnx.Rngs):
    if net not in NETS:
      raise ValueError(f'LPIPS net {net!r} unknown; choose one of {sorted(NETS)}')
    self.net = net
    spec = NETS[net]
    self.conv_indices = tuple(sorted(spec['convs']))
    self.features = nnx.List([
        layers.Conv(cin, cout, (k, k), strides=(s, s), padding=((p, p), (p, p)), rngs=rngs)
        for (cin, cout, k, s, p) in (spec['convs'][i] for i in self.conv_indices)])
    self.lins = nnx.List([layers.Conv(c, 1, (1, 1), use_bias=False, rngs=rngs) for c in spec['channels']])

  def trunk(self, x: jax.Array) -> list[jax.Array]:
    """x: [N, H, W, 3] (already scaled) → the 5 tapped ReLU outputs."""
    spec = NETS[self.net]
    convs = dict(zip(self.conv_indices, self.features))
    outs = []
    last = max(spec['taps'])
    for i in range(last + 1):
      if i in convs:
        x = convs[i](x)
      elif i in spec['pools']:
        k, s = spec['pools'][i]
        x = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, k, k, 1), (1, s, s, 1), 'VALID')
      else:
        x = jax.nn.relu(x)
      if i in spec['taps']:
        outs.append(x)
    return outs

  def __call__(self, x0: jax.Array, x1: jax.Array, *, normalize: bool = False) -> jax.Array:
    """x0, x1: [N, H, W, 3] in [-1, 1] ([0, 1] with normalize=True) → [N] distances."""
    x0 = x0.astype(jnp.float32)
    x1 = x1.astype(jnp.float32)
    if normalize:
      x0, x1 = 2 * x0 - 1, 2 * x1 - 1
    shift, scale = jnp.asarray(SHIFT), jnp.asarray(SCALE)
    n = x0.shape[0]
    feats = self.trunk(jnp.concatenate([(x0 - shift) / scale, (x1 - shift) / scale], axis=0))
    total = jnp.zeros((n,), jnp.float32)
    for f, lin in zip(feats, self.lins):
      f = f / (jnp.sqrt(jnp.sum(jnp.square(f), axis=-1, keepdims=True)) + 1e-10)
      d = jnp.square(f[:n] - f[n:])
      total = total + jnp.mean(lin(d)[..., 0], axis=(1, 2))
    return total


# ------------------------------------------------------------------------------------------ weights


def _read_state_dict(path: str) -> dict[str, np.ndarray]:
  ext = os.path.splitext(path)[1].lower()
  if ext == '.npz':
    with np.load(path) as z:
      return {k: np.asarray(z[k]) for k in z.files}
  if ext == '.safetensors':
    from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
    return load_file(path)
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise LPIPSWeightsError(
        f'reading {path} needs PyTorch (CPU): pip install torch==2.13.0 --index-url '
        'https://download.pytorch.org/whl/cpu, or convert it to .npz / .safetensors with the same keys') from e
  sd = torch.load(path, map_location='cpu', weights_only=True)
  if not isinstance(sd, dict):
    raise LPIPSWeightsError(f'{path} is not a state dict (got {type(sd).__name__})')
  return {k: v.detach().float().numpy() for k, v in sd.items()}


def default_backbone_path(net: str) -> str:
  torch_home = os.environ.get('TORCH_HOME', os.path.join(os.path.expanduser('~'), '.cache', 'torch'))
  return os.path.join(torch_home, 'hub', 'checkpoints', NETS[net]['torchvision_file'])


def default_heads_path(net: str) -> str | None:
  spec = importlib.util.find_spec('lpips')  # locates the package without importing it (torchvision)
  if spec is None or not spec.submodule_search_locations:
    return None
  return os.path.join(list(spec.submodule_search_locations)[0], 'weights', 'v0.1', NETS[net]['heads_file'])


def load_lpips(net: str = 'vgg', backbone_path: str | None = None, heads_path: str | None = None) -> LPIPS:
  """LPIPS with torchvision trunk weights and the lpips package's linear heads (see module doc)."""
  if net not in NETS:
    raise ValueError(f'LPIPS net {net!r} unknown; choose one of {sorted(NETS)}')
  spec = NETS[net]
  backbone_path = backbone_path or default_backbone_path(net)
  if not os.path.isfile(backbone_path):
    raise LPIPSWeightsError(
        f'LPIPS-{net} trunk weights {backbone_path} not found. Download torchvision\'s '
        f'{spec["torchvision_file"]} (https://download.pytorch.org/models/{spec["torchvision_file"]}) '
        f'into {os.path.dirname(default_backbone_path(net))}, or pass its path (--lpips-backbone)')
  heads_path = heads_path or default_heads_path(net)
  if heads_path is None or not os.path.isfile(heads_path):
    raise LPIPSWeightsError(
        f'LPIPS-{net} linear heads {heads_path or "lpips/weights/v0.1/" + spec["heads_file"]} not found; '
        'install the lpips package (pip install --no-deps lpips==0.1.4) or pass the path of its '
        f'weights/v0.1/{spec["heads_file"]} (--lpips-heads)')
  trunk = _read_state_dict(backbone_path)
  heads = _read_state_dict(heads_path)
  model = LPIPS(net, rngs=nnx.Rngs(0))
  for conv, i in zip(model.features, model.conv_indices):
    for key in (f'features.{i}.weight', f'features.{i}.bias'):
      if key not in trunk:
        raise LPIPSWeightsError(f'{backbone_path}: key {key} missing; expected a torchvision '
                                f'{spec["torchvision_file"]} state dict (features.N.weight/bias)')
    w, b = trunk[f'features.{i}.weight'], trunk[f'features.{i}.bias']
    want = conv.kernel.shape
    w = np.transpose(w, (2, 3, 1, 0))  # [O, I, kh, kw] → [kh, kw, I, O]
    if w.shape != want:
      raise LPIPSWeightsError(f'{backbone_path}: features.{i}.weight has shape {w.shape[::-1]} (HWIO '
                              f'{w.shape}); LPIPS-{net} expects HWIO {want}')
    conv.kernel[...] = jnp.asarray(w, jnp.float32)
    conv.bias[...] = jnp.asarray(b, jnp.float32)
  for l, lin in enumerate(model.lins):
    key = f'lin{l}.model.1.weight'
    if key not in heads:
      raise LPIPSWeightsError(f'{heads_path}: key {key} missing; expected lpips v0.1 {spec["heads_file"]}')
    w = np.transpose(heads[key], (2, 3, 1, 0))
    if w.shape != lin.kernel.shape:
      raise LPIPSWeightsError(f'{heads_path}: {key} shape {heads[key].shape} does not fit LPIPS-{net}')
    lin.kernel[...] = jnp.asarray(w, jnp.float32)
  return model
