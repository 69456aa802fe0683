"""The README's first Python API snippet runs as written (it documents shapes users rely on)."""

import pathlib
import re


def test_readme_python_api_snippet_runs():
  readme = (pathlib.Path(__file__).resolve().parents[1] / 'README.md').read_text()
  snippet = re.findall(r'```python\n(.*?)```', readme, re.S)[0]
  scope = {}
  exec(compile(snippet, 'README.md', 'exec'), scope)  # pylint: disable=exec-used
  rows = scope['rows']
  assert scope['F'].shape == (rows, 8, 8, 4)
  assert scope['mean'].shape == (rows, 8, 8, 4)
  assert scope['video'].shape == (rows, 16, 16, 3)
