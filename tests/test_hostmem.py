"""gcd_jax/hostmem.py: glibc malloc keeps freed memory unless told not to; large blocks stop being mmapped."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.fixtures_train import REPO

PROBE = r'''
import ctypes, os, sys
from gcd_jax import hostmem
applied = hostmem.keep_freed_memory()
libc = ctypes.CDLL('libc.so.6')
class MallInfo2(ctypes.Structure):
  _fields_ = [(n, ctypes.c_size_t) for n in ('arena', 'ordblks', 'smblks', 'hblks', 'hblkhd', 'usmblks',
                                             'fsmblks', 'uordblks', 'fordblks', 'keepcost')]
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
before = libc.mallinfo2().hblks
p = libc.malloc(256 << 20)  # a 256 MiB block: mmapped by default (one more hblk), from the heap when kept
print(applied, libc.mallinfo2().hblks - before)
libc.free(p)
'''


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='glibc only')
@pytest.mark.parametrize('setting,applied,mmapped', [('', 'True', '0'), ('default', 'False', '1')])
def test_large_blocks_come_from_the_heap_unless_disabled(setting, applied, mmapped):
  env = dict(os.environ, GCD_JAX_MALLOC=setting, JAX_PLATFORMS='cpu',
             PYTHONPATH=REPO + os.pathsep + os.environ.get('PYTHONPATH', ''))
  out = subprocess.run([sys.executable, '-c', PROBE], env=env, capture_output=True, text=True, check=True).stdout
  assert out.split() == [applied, mmapped], out
