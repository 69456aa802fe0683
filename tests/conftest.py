"""Test-wide setup: 8 fake CPU devices (sharding tests), CPU only, absl flags parsed (Grain workers)."""

import os

os.environ.setdefault('JAX_PLATFORMS', 'cpu')
# One persistent compilation cache for the whole suite (both xdist workers and every subprocess the tests
# start): a program compiled once (the tiny train step, the sampler) is loaded by the next process that needs
# it, and a developer's rerun skips most compiles. Override with JAX_COMPILATION_CACHE_DIR.
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR',
                      os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), '.pytest_jax_cache'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.5')
# Must be set before jax initialises its backend: sharding tests need an 8-device mesh on one CPU.
if '--xla_force_host_platform_device_count' not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                             ' --xla_force_host_platform_device_count=8').strip()

# The test processes keep glibc's default malloc: gcd_jax/hostmem.py's setting (which every `gcd-jax` command,
# including those the tests start, applies) did not shorten the suite (18:31 vs 17:42 min; the tiny models have
# no large temporaries) and let each long-lived xdist worker keep a ~6.5 GB peak heap.
from absl import flags  # pylint: disable=g-import-not-at-top

flags.FLAGS.mark_as_parsed()  # Grain worker processes read absl flags.
