"""The one config system of every command: `--config FILE.py[:ARG]` plus `--config.FIELD=VALUE` overrides.

This is `ml_collections.config_flags` itself (typed overrides, "did you mean" for unknown fields, the config
locked so a typo can never add a field), run on a private absl FlagValues so that it composes with the
argparse CLI:

  gcd-jax train --config configs/tiny.py --workdir W --config.optim.lr=1e-3 --config.batch_size 4

FILE resolves relative to the working directory, then to the installed package's `configs/` folder
(`configs/tiny.py` works from any directory). ARG is passed to the file's `get_config(arg)` (the big_vision
preset convention, `configs/gcd.py:data=kubric,traj=gradual`). Every failure is a `ConfigError` with a
one-line message that names the problem and the fix.
"""

from __future__ import annotations

import os
import re
from typing import Sequence

import ml_collections

OVERRIDE = re.compile(r'^--?config\.')


class ConfigError(ValueError):
  """A config file, preset argument or override that cannot be used (a usage error: exit code 2)."""


def packaged_configs_dir() -> str:
  """The installed project's configs/ folder (experiment files; located, not imported: configs/ imports
  the library, never the reverse)."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = importlib.util.find_spec('configs')
  if spec is None or not spec.submodule_search_locations:
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs')
  return list(spec.submodule_search_locations)[0]


def resolve_config_path(path: str) -> str:
  """path as given (relative to the working directory), else the installed package's copy
  (`configs/tiny.py` and `tiny.py` both name the package's configs/tiny.py)."""
  if os.path.exists(path):
    return os.path.abspath(path)
  rel = path[len('configs/'):] if path.startswith('configs/') else path
  packaged = os.path.join(packaged_configs_dir(), rel)
  return packaged if os.path.exists(packaged) else path


def available_configs() -> list[str]:
  return sorted(f'configs/{f}' for f in os.listdir(packaged_configs_dir())
                if f.endswith('.py') and not f.startswith('_') and f != 'models.py')


def split_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
  """argv → (other arguments, config overrides). Overrides are `--config.a.b=V` or `--config.a.b V`."""
  rest, overrides = [], []
  i = 0
  argv = list(argv)
  while i < len(argv):
    a = argv[i]
    if OVERRIDE.match(a):
      if '=' in a:
        overrides.append('--' + a.lstrip('-'))
      else:
        if i + 1 >= len(argv):
          raise ConfigError(f'{a} needs a value: {a}=VALUE')
        overrides.append('--' + a.lstrip('-') + '=' + argv[i + 1])
        i += 1
    else:
      rest.append(a)
    i += 1
  return rest, overrides


def _one_line(text: str) -> str:
  lines = [l.strip() for l in str(text).strip().strip('\'"').splitlines() if l.strip()]
  return ' '.join(l for l in lines if not l.startswith(('Traceback', 'File "'))) if lines else ''


def load_config(spec: str, overrides: Sequence[str] = (), *, lock: bool = True) -> ml_collections.ConfigDict:
  """spec 'FILE.py[:ARG]' + overrides ['--config.optim.lr=1e-5', ...] → the (locked) ConfigDict."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  path, sep, arg = str(spec).partition(':')
  resolved = resolve_config_path(path)
  if not path.endswith('.py') or not os.path.isfile(resolved):
    raise ConfigError(f'--config {spec}: no such config file; give a path to a config file or one of the '
                      f'packaged {", ".join(available_configs())} (with :ARG for presets, e.g. '
                      'configs/gcd.py:data=kubric)')
  argv = ['gcd-jax', f'--config={resolved}{sep}{arg}'] + ['--' + o.lstrip('-') for o in overrides]
  values = flags.FlagValues()
  config_flags.DEFINE_config_file('config', default=None, flag_values=values, lock_config=lock, sys_argv=argv)
  try:
    values(argv)
    config = values.config
  except flags.UnrecognizedFlagError as e:
    raise ConfigError(f'{e}: overrides look like --config.optim.lr=1e-5') from None
  except flags.IllegalFlagValueError as e:
    msg = str(e)
    if 'Error whilst parsing config file' in msg:
      last = [l.strip() for l in msg.splitlines() if l.strip()][-1]
      raise ConfigError(f'--config {spec}: {last.split(": ", 1)[-1]}') from None
    raise ConfigError(_one_line(msg).replace('flag --config.', '--config.') + ' (the value must have the field\'s type)') from None
  except (AttributeError, KeyError):
    raise ConfigError(_unknown_field_message(spec, overrides)) from None
  except (ValueError, TypeError) as e:
    raise ConfigError(f'--config {spec}: {_one_line(e)}') from None
  return config


def _unknown_field_message(spec: str, overrides: Sequence[str]) -> str:
  """Names the first override whose field does not exist, with the nearest valid names at its level."""
  import difflib  # pylint: disable=g-import-not-at-top
  base = load_config(spec, (), lock=False)
  for o in overrides:
    name = o.split('=', 1)[0].lstrip('-')
    node, parts = base, name.split('.')[1:]
    for depth, part in enumerate(parts):
      if isinstance(node, ml_collections.ConfigDict) and part in node:
        node = node[part]
        continue
      keys = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
      where = '.'.join(['config'] + parts[:depth])
      near = difflib.get_close_matches(part, keys, n=3, cutoff=0.5)
      hint = (f'did you mean {", ".join(f"--{where}.{k}" for k in near)}?' if near else
              f'{where} has: {", ".join(keys)}' if keys else f'{where} is not a group of fields')
      return f'--{name}: no config field {part!r}; {hint}'
  return f'unknown config field in {" ".join(overrides)}'


def load_model_or_training(spec: str, overrides: Sequence[str] = ()):
  """--config of `sample`, `evaluate`, `convert`, `export` → (model config, training config or None).

  spec: a model preset ('tiny', 'gcd,dtype=bfloat16' = configs/models.py:ARG), 'configs/models.py:ARG', or a
  training config file 'configs/gcd.py[:ARG]' (its .model is the model config)."""
  path = str(spec).partition(':')[0]
  if not path.endswith('.py'):  # a bare preset: the library's own, no config file involved
    from gcd_jax.models import presets  # pylint: disable=g-import-not-at-top
    if overrides:
      raise ConfigError(f'--config {spec}: --config.FIELD overrides need a config file, e.g. '
                        f'--config configs/models.py:{spec}')
    try:
      return presets.get_config(str(spec)), None
    except ValueError as e:
      raise ConfigError(f'--config {spec}: {e}') from None
  cfg = load_config(spec, overrides, lock=False)
  if 'model' in cfg:
    return cfg.model, cfg
  if 'unet' in cfg:
    return cfg, None
  raise ConfigError(f'--config {spec}: neither a model config (with .unet) nor a training config (with .model)')


def preset_args(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """The ARG of `--config FILE.py:ARG` ('k=v,k=v') → typed fields: each value is cast to its default's type
  (int, float, bool: true/false/1/0, str). Unknown keys and bad values raise ValueError naming the choices.
  A default of None accepts any string (an optional argument)."""
  out = dict(defaults)
  for item in [a for a in (arg or '').split(',') if a]:
    k, sep, v = item.partition('=')
    if not sep or k not in out:
      raise ValueError(f'config argument {item!r}: expected key=value with key in {sorted(out)}')
    d = defaults[k]
    try:
      if isinstance(d, bool):
        if v.lower() not in ('1', '0', 'true', 'false', 'yes', 'no'):
          raise ValueError(v)
        out[k] = v.lower() in ('1', 'true', 'yes')
      else:
        out[k] = type(d)(v) if d is not None else v
    except ValueError:
      kind = {'int': 'an integer', 'float': 'a number', 'bool': 'true or false'}.get(type(d).__name__, 'a string')
      raise ValueError(f'config argument {item!r}: {k} must be {kind}') from None
  return ml_collections.ConfigDict(out)


def to_unlocked(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A mutable deep copy (library code that fills in derived fields works on this)."""
  return ml_collections.ConfigDict(config.to_dict())
