"""The README's Python snippets run as written, and every `gcd_jax` name it shows imports."""

import importlib
import pathlib
import re

README = (pathlib.Path(__file__).resolve().parents[1] / 'README.md').read_text()
SNIPPETS = re.findall(r'```python\n(.*?)```', README, re.S)


def test_pipeline_snippet_runs_on_the_demo_model():
  """The first snippet: GCDPipeline.from_pretrained('demo') samples the packaged model (the tiny demo U-Net)."""
  scope = {}
  exec(compile(SNIPPETS[0], 'README.md', 'exec'), scope)  # pylint: disable=exec-used
  out = scope['out']
  assert out.videos.shape == (2, 6, 32, 48, 3) and 0.0 <= out.videos.min() and out.videos.max() <= 1.0
  assert out.spherical_dst.shape == (6, 3)
  assert abs(out.spherical_dst[-1][0] - 40.0) < 1e-4 and abs(out.spherical_dst[0][0]) < 1e-6  # gradual
  assert not (out.videos[0] == out.videos[1]).all()  # two samples, two noises


def test_building_blocks_snippet_runs():
  snippet = next(s for s in SNIPPETS if 'build_gcd_network' in s)
  scope = {}
  exec(compile(snippet, 'README.md', 'exec'), scope)  # pylint: disable=exec-used
  rows = scope['rows']
  assert scope['F'].shape == (rows, 8, 8, 4)
  assert scope['mean'].shape == (rows, 8, 8, 4)
  assert scope['video'].shape == (rows, 16, 16, 3)


def test_every_name_the_readme_shows_imports():
  names = set(re.findall(r'from (gcd_jax[\w.]*) import ([\w, ]+)', README))
  assert names
  for module, items in names:
    mod = importlib.import_module(module)
    for item in [i.split(' as ')[0].strip() for i in items.split(',') if i.strip()]:
      if hasattr(mod, item):
        continue
      importlib.import_module(f'{module}.{item}')  # a submodule
  # The table of building blocks: `gcd_jax.diffusion` exports what the README lists for it.
  row = next(l for l in README.splitlines() if l.startswith('| diffusion |'))
  diffusion = importlib.import_module('gcd_jax.diffusion')
  for name in re.findall(r'`(\w+)`', row.split('|')[3]):
    assert hasattr(diffusion, name), name
