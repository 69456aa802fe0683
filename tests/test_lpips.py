"""LPIPS (VGG16 / AlexNet) vs the `lpips` package (PyTorch) with the same random trunk weights.

The `lpips` package imports torchvision, which does not import beside our CPU torch; its reference here
runs on a minimal stand-in `torchvision.models` (vgg16 / alexnet with torchvision's exact `.features`
layer layout, built from torch.nn) registered in sys.modules before lpips is imported.
Install the reference with `pip install --no-deps lpips==0.1.4`.
"""

import importlib.util
import os
import sys
import types

import numpy as np
import pytest

torch = pytest.importorskip('torch')
if importlib.util.find_spec('lpips') is None:
  pytest.skip('lpips not installed (pip install --no-deps lpips==0.1.4)', allow_module_level=True)

from gcd_jax.evaluate import lpips as jlpips  # pylint: disable=g-import-not-at-top


def _torchvision_standin():
  """torchvision.models.vgg16 / alexnet: only `.features`, layer for layer as torchvision builds it."""
  nn = torch.nn

  class _Net(nn.Module):
    def __init__(self, features):
      super().__init__()
      self.features = features

  def vgg16(pretrained=False, **_):
    assert not pretrained, 'the stand-in has no pretrained weights'
    layers, cin = [], 3
    for v in [64, 64, 'M', 128, 128, 'M', 256, 256, 256, 'M', 512, 512, 512, 'M', 512, 512, 512, 'M']:
      if v == 'M':
        layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
      else:
        layers += [nn.Conv2d(cin, v, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
        cin = v
    return _Net(nn.Sequential(*layers))

  def alexnet(pretrained=False, **_):
    assert not pretrained, 'the stand-in has no pretrained weights'
    return _Net(nn.Sequential(
        nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2), nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(64, 192, kernel_size=5, padding=2), nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(192, 384, kernel_size=3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(256, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2)))

  def squeezenet1_1(pretrained=False, **_):
    raise NotImplementedError('not needed by these tests')

  tv = types.ModuleType('torchvision')
  models = types.ModuleType('torchvision.models')
  models.vgg16, models.alexnet, models.squeezenet1_1 = vgg16, alexnet, squeezenet1_1
  tv.models = models
  return tv, models


@pytest.fixture(scope='module')
def lpips_pkg():
  saved = {k: sys.modules.get(k) for k in ('torchvision', 'torchvision.models')}
  tv, models = _torchvision_standin()
  sys.modules['torchvision'], sys.modules['torchvision.models'] = tv, models
  try:
    import lpips  # pylint: disable=g-import-not-at-top
    yield lpips
  finally:
    for k, v in saved.items():
      if v is None:
        sys.modules.pop(k, None)
      else:
        sys.modules[k] = v


@pytest.mark.parametrize('net,size', [('vgg', 48), ('alex', 64)])
def test_lpips_matches_package(lpips_pkg, tmp_path, net, size):
  torch.manual_seed(0)
  ref = lpips_pkg.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False).eval()
  # The trunk's random torchvision-layout weights → a torchvision-format file for our loader.
  sd = {}
  for s in range(1, 6):
    for name, t in getattr(ref.net, f'slice{s}').state_dict().items():
      sd[f'features.{name}'] = t.clone()
  trunk_file = os.path.join(tmp_path, jlpips.NETS[net]['torchvision_file'])
  torch.save(sd, trunk_file)
  model = jlpips.load_lpips(net, backbone_path=trunk_file)  # heads: the package's shipped file

  rng = np.random.default_rng(1)
  x0 = rng.uniform(-1, 1, (3, size, size + 16, 3)).astype(np.float32)
  x1 = np.clip(x0 + 0.3 * rng.standard_normal(x0.shape), -1, 1).astype(np.float32)
  with torch.no_grad():
    want = ref(torch.from_numpy(x0).permute(0, 3, 1, 2), torch.from_numpy(x1).permute(0, 3, 1, 2))
  want = want.numpy().reshape(-1)
  got = np.asarray(model(x0, x1))
  assert got.shape == (3,)
  assert np.max(np.abs(got - want)) <= 1e-4, (got, want)
  assert np.all(want > 0)
  # [0, 1] inputs with normalize=True give the same numbers; identical inputs give 0.
  got01 = np.asarray(model((x0 + 1) / 2, (x1 + 1) / 2, normalize=True))
  np.testing.assert_allclose(got01, got, atol=1e-5)
  assert np.max(np.abs(np.asarray(model(x0, x0)))) == 0.0


def test_missing_weight_files_error_names_file(tmp_path):
  with pytest.raises(jlpips.LPIPSWeightsError, match='vgg16-397923af.pth'):
    jlpips.load_lpips('vgg', backbone_path=os.path.join(tmp_path, 'vgg16-397923af.pth'))
  trunk = os.path.join(tmp_path, 'alex.npz')
  np.savez(trunk, **{'features.0.weight': np.zeros((64, 3, 11, 11), np.float32)})
  with pytest.raises(jlpips.LPIPSWeightsError, match='heads'):
    jlpips.load_lpips('alex', backbone_path=trunk, heads_path=os.path.join(tmp_path, 'nope.pth'))
  with pytest.raises(jlpips.LPIPSWeightsError, match=r'features\.0\.bias'):
    jlpips.load_lpips('alex', backbone_path=trunk)
