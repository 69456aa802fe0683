"""The one progress-bar helper of the commands (tqdm on stderr, or nothing with --no-progress)."""

from __future__ import annotations

import sys


def bar(total: int | None, *, enabled: bool, desc: str, unit: str, leave: bool = True):
  """A tqdm bar, or None when disabled (or tqdm is missing): callers write `if b is not None: b.update()`."""
  if not enabled:
    return None
  try:
    from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True, leave=leave)
