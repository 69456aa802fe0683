"""`--config path.py[:arg]` + `--config.a.b=value` overrides (ml_collections.config_flags semantics, argparse).

ml_collections' own `config_flags` needs absl flag parsing; the `gcd-jax` CLI is argparse, so this is the same
syntax on argparse: the file's `get_config(arg)` builds the ConfigDict, then each override is applied in
order with the type of the existing field (bools accept true/false/1/0; tuples a Python literal).
"""

from __future__ import annotations

import ast
import importlib.util
import os

import ml_collections


def resolve_config_path(path: str) -> str:
  """A config file path as given (relative to the working directory), else the installed project's copy
  (`configs/tiny.py` names the package's configs/tiny.py from any directory)."""
  if os.path.exists(path):
    return path
  import configs  # pylint: disable=g-import-not-at-top
  rel = path[len('configs/'):] if path.startswith('configs/') else path
  packaged = os.path.join(os.path.dirname(os.path.abspath(configs.__file__)), rel)
  return packaged if os.path.exists(packaged) else path


def load_config(spec: str) -> ml_collections.ConfigDict:
  path, _, arg = spec.partition(':')
  path = resolve_config_path(path)
  if not path.endswith('.py') or not os.path.exists(path):
    raise FileNotFoundError(f'--config {spec!r}: expected an existing config file such as '
                            'configs/tiny.py or configs/gcd.py:data=kubric,traj=gradual,az=90')
  mod_spec = importlib.util.spec_from_file_location(f'_gcd_train_cfg_{abs(hash(os.path.abspath(path)))}', path)
  mod = importlib.util.module_from_spec(mod_spec)
  mod_spec.loader.exec_module(mod)
  return mod.get_config(arg or None)


def _parse_value(old, text: str):
  if isinstance(old, bool):
    if text.lower() in ('1', 'true', 'yes'):
      return True
    if text.lower() in ('0', 'false', 'no'):
      return False
    raise ValueError(f'expected a bool, got {text!r}')
  if isinstance(old, (int, float)):
    return type(old)(ast.literal_eval(text))
  if isinstance(old, (tuple, list)):
    return tuple(ast.literal_eval(text))
  if old is None:
    try:
      return ast.literal_eval(text)
    except (ValueError, SyntaxError):
      return text
  return text


def apply_overrides(cfg: ml_collections.ConfigDict, overrides) -> ml_collections.ConfigDict:
  """overrides: ['--config.optim.lr=1e-5', 'config.total_steps=10', ...] (also '--config.x', 'value' pairs)."""
  items = list(overrides)
  i = 0
  while i < len(items):
    item = items[i].lstrip('-')
    if not item.startswith('config.'):
      raise ValueError(f'unknown argument {items[i]!r}; overrides look like --config.optim.lr=1e-5')
    key, sep, value = item[len('config.'):].partition('=')
    if not sep:
      if i + 1 >= len(items):
        raise ValueError(f'{items[i]} needs a value')
      value = items[i + 1]
      i += 1
    *parents, leaf = key.split('.')
    node = cfg
    for p in parents:
      if p not in node:
        raise KeyError(f'--config.{key}: no field {p!r} (known: {sorted(node.keys())})')
      node = node[p]
    if leaf not in node:
      raise KeyError(f'--config.{key}: no field {leaf!r} (known: {sorted(node.keys())})')
    node[leaf] = _parse_value(node[leaf], value)
    i += 1
  return cfg
