"""Atomic, umask-respecting writes: every file or folder a command produces appears complete or not at all.

A file is written to a hidden temporary next to its final path and renamed over it (`os.replace` is atomic
on POSIX within one file system); a folder is filled under a hidden `.NAME.*.partial` sibling and renamed
the same way. `tempfile` creates its files 0600 and folders 0700 whatever the umask, so the final modes are
set from the umask (0644 / 0755 under the usual 022), as `open()` / `os.makedirs` would have made them.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from typing import Iterator


def current_umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


def set_default_mode(path: str) -> None:
  """The mode `open()` / `os.makedirs` would give path under the current umask (0644 / 0755 usually)."""
  base = 0o777 if os.path.isdir(path) else 0o666
  os.chmod(path, base & ~current_umask())


@contextlib.contextmanager
def atomic_file(path: str, suffix: str = '') -> Iterator[str]:
  """Yields a temporary path in path's folder (created if needed); on a clean exit it becomes `path`, on an
  exception (KeyboardInterrupt included) it is removed and `path` is left as it was. suffix: the temporary's
  extension, for writers that pick the format from it (imageio, numpy)."""
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f'.{os.path.basename(path)}.', suffix=suffix or '.tmp', dir=folder)
  os.close(fd)
  try:
    yield tmp
    set_default_mode(tmp)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


@contextlib.contextmanager
def atomic_dir(path: str, overwrite: bool = False) -> Iterator[str]:
  """Yields a temporary folder next to `path`; on a clean exit it becomes `path`, on an exception it is
  deleted. Nothing half-written is ever found at `path`. An existing empty folder at `path` is replaced; a
  non-empty one only with overwrite=True (else FileExistsError, before anything is written)."""
  final = os.path.abspath(path)
  parent = os.path.dirname(final)
  if not overwrite and os.path.isdir(final) and os.listdir(final):
    raise FileExistsError(f'{final} already exists and is not empty; choose another output or delete it')
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f'.{os.path.basename(final)}.', suffix='.partial', dir=parent)
  try:
    yield tmp
    set_default_mode(tmp)
    if os.path.isdir(final):
      if overwrite:
        shutil.rmtree(final)
      else:
        os.rmdir(final)  # empty (checked above); a folder filled meanwhile raises OSError here
    os.replace(tmp, final)
  finally:
    if os.path.isdir(tmp):
      shutil.rmtree(tmp, ignore_errors=True)


def write_text(path: str, text: str) -> str:
  with atomic_file(path) as tmp:
    with open(tmp, 'w', encoding='utf-8') as f:
      f.write(text)
  return path


def write_json(path: str, obj, **kwargs) -> str:
  kwargs.setdefault('indent', 1)
  return write_text(path, json.dumps(obj, **kwargs) + '\n')
