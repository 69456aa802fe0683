"""Dataset splits (docs/reference.md §4.1, §4.3, §5.4) and `eval/list`-style text files.

* Kubric-4D: train scn00000–02799, val 02800–02899, test 02900–02999; test20/50/100 = the first 20/50/100
  test scenes (`eval/list/kubric_test{20,50,100}.txt`).
* ParallelDomain-4D: explicit name lists from `pardom_datasplit.json` (the JSON wins over config counts, §6.14).
* Procedural: contiguous scene-index ranges with the Kubric proportions (28/1/1), see `procedural_split`.
"""

from __future__ import annotations

import json
import os

KUBRIC_SPLITS = {'train': (0, 2800), 'val': (2800, 2900), 'test': (2900, 3000),
                 'test20': (2900, 2920), 'test50': (2900, 2950), 'test100': (2900, 3000)}


def kubric_split(split: str) -> list[int]:
  """Scene indices of a Kubric-4D split ('train', 'val', 'test', 'test20', 'test50', 'test100')."""
  if split not in KUBRIC_SPLITS:
    raise ValueError(f'unknown Kubric-4D split {split!r}; choose one of {sorted(KUBRIC_SPLITS)}')
  lo, hi = KUBRIC_SPLITS[split]
  return list(range(lo, hi))


def procedural_split(split: str, num_scenes: int) -> list[int]:
  """Scene indices for the procedural dataset: train / val / test by contiguous ranges.

  Proportions follow Kubric's 2800/100/100 (1/30 each for val and test, at least 1 scene each when
  num_scenes ≥ 3); with `num_scenes` < 3 every scene is in train and val/test are empty (smoke runs).
  """
  if num_scenes < 1:
    raise ValueError(f'num_scenes must be ≥ 1, got {num_scenes}')
  if num_scenes < 3:
    if split not in ('train', 'val', 'test'):
      raise ValueError(f'unknown split {split!r}; choose train/val/test')
    return list(range(num_scenes)) if split == 'train' else []
  n_eval = max(1, num_scenes // 30)
  n_train = num_scenes - 2 * n_eval
  ranges = {'train': (0, n_train), 'val': (n_train, n_train + n_eval), 'test': (n_train + n_eval, num_scenes)}
  if split not in ranges:
    raise ValueError(f'unknown split {split!r}; choose one of {sorted(ranges)}')
  return list(range(*ranges[split]))


def load_pardom_split(split_json: str, split: str) -> list[str]:
  """Scene names of `split` from a `pardom_datasplit.json`-style file (keys train/val/test + counts)."""
  if not os.path.exists(split_json):
    raise FileNotFoundError(
        f'ParallelDomain split JSON {split_json!r} not found; pass the reference eval/list/pardom_datasplit.json '
        '(or write one with write_pardom_split).')
  with open(split_json) as f:
    data = json.load(f)
  for key in (split, f'{split}_scenes', f'{split}_names'):
    if key in data:
      names = list(data[key])
      count = data.get(f'num_{split}')
      if count is not None and int(count) != len(names):
        raise ValueError(f'{split_json}: num_{split}={count} but {len(names)} names listed')
      return names
  raise KeyError(f'{split_json}: no scene list for split {split!r} (keys: {sorted(data)})')


def write_pardom_split(path: str, train: list[str], val: list[str], test: list[str], seed: int = 2024):
  data = {'seed': seed, 'num_scenes': len(train) + len(val) + len(test), 'num_train': len(train),
          'num_val': len(val), 'num_test': len(test), 'train': list(train), 'val': list(val), 'test': list(test)}
  _atomic_write(path, json.dumps(data, indent=1))


def read_scene_list(path: str) -> list[str]:
  """`eval/list/*.txt` → scene basenames (`scn02900`, `scene_000123`). '#' lines and blanks ignored;
  directory prefixes are dropped (the reference uses only the basename, §5.1)."""
  names = []
  with open(path) as f:
    for line in f:
      line = line.strip()
      if not line or line.startswith('#'):
        continue
      names.append(os.path.basename(line.rstrip('/')))
  return names


def write_scene_list(path: str, names, prefix: str = '', comment: str | None = None):
  lines = [f'# {comment}'] if comment else []
  lines += [os.path.join(prefix, n) if prefix else n for n in names]
  _atomic_write(path, '\n'.join(lines) + '\n')


def _atomic_write(path: str, text: str):
  from gcd_jax import fileio  # pylint: disable=g-import-not-at-top
  fileio.write_text(path, text)
