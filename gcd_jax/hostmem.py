"""Host memory: glibc malloc told to keep and reuse freed memory, for the CPU programs of every command.

With glibc's defaults every large temporary of an XLA:CPU program (attention logits, the temp block, clip
buffers of the input pipeline) is a fresh `mmap` whose pages fault on first touch and are unmapped on free,
and XLA's worker threads allocate from per-thread arenas whose large blocks are always mmapped. One arena and
thresholds above any block size make the blocks come from the main heap and be reused. Measured on the
2-core VM (docs/performance.md): the small-preset 25-step sampler 70.9 s → 42.4 s, PyTorch's eager loop
33.4 s → 24.6 s under the same setting. The price is that a process keeps its peak heap until it exits.

Applied at the start of every `gcd-jax` command, before JAX creates its threads (arenas made earlier keep
their settings); not in the pytest workers (tests/conftest.py says why). `GCD_JAX_MALLOC=default` keeps
glibc's behaviour; by default the setting is skipped on hosts with an accelerator (/dev/nvidia*, /dev/accel*),
where the programs do not run on this allocator and one arena could serialise the data pipeline's threads.
No-op without glibc.
"""

from __future__ import annotations

import ctypes
import glob
import os

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8  # <malloc.h>
_INT_MAX = 2 ** 31 - 1  # mallopt takes an int
_DONE = False


def accelerator_host() -> bool:
  platforms = os.environ.get('JAX_PLATFORMS', '')
  if platforms and set(platforms.split(',')) <= {'cpu'}:
    return False
  return bool(glob.glob('/dev/nvidia[0-9]*') or glob.glob('/dev/accel[0-9]*'))


def keep_freed_memory(*, force: bool = False) -> bool:
  """One malloc arena, no mmap for large blocks, no trimming (once per process). → whether it applied."""
  global _DONE
  if _DONE:
    return True
  if not force and (os.environ.get('GCD_JAX_MALLOC', '').lower() == 'default' or
                    (accelerator_host() and os.environ.get('GCD_JAX_MALLOC', '').lower() != 'keep')):
    return False
  try:
    libc = ctypes.CDLL('libc.so.6')
    mallopt = libc.mallopt
  except (OSError, AttributeError):
    return False
  ok = all(mallopt(option, value) == 1 for option, value in ((_M_ARENA_MAX, 1), (_M_MMAP_THRESHOLD, _INT_MAX),
                                                              (_M_TRIM_THRESHOLD, _INT_MAX)))
  _DONE = ok
  return ok
