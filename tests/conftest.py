"""Test-wide setup: 8 fake CPU devices (sharding tests), CPU only, absl flags parsed (Grain workers)."""

import os

os.environ.setdefault('JAX_PLATFORMS', 'cpu')
# One persistent compilation cache for the whole suite (both xdist workers and every subprocess the tests
# start): a program compiled once (the tiny train step, the sampler) is loaded by the next process that needs
# it, and a developer's rerun skips most compiles. Override with JAX_COMPILATION_CACHE_DIR.
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR',
                      os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), '.pytest_jax_cache'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.1')
# Must be set before jax initialises its backend: sharding tests need an 8-device mesh on one CPU.
if '--xla_force_host_platform_device_count' not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                             ' --xla_force_host_platform_device_count=8').strip()

# The test processes keep glibc's default malloc: gcd_jax/hostmem.py's setting (which every `gcd-jax` command,
# including those the tests start, applies) did not shorten the suite (18:31 vs 17:42 min; the tiny models have
# no large temporaries) and let each long-lived xdist worker keep a ~6.5 GB peak heap.
from absl import flags  # pylint: disable=g-import-not-at-top

flags.FLAGS.mark_as_parsed()  # Grain worker processes read absl flags.

# The modules that take longest (minutes: they train, compile several programs or start subprocesses), longest
# first. `--dist loadscope` hands modules to the two xdist workers in collection order; with these first, the
# many short modules fill in behind them instead of one worker idling while the other runs a 5-minute module
# at the end (longest-processing-time-first scheduling). Measured durations: docs/performance.md, "Test suite".
# test_train_step comes first: test_workdir's `gcd-jax train` runs its program, and loads it from the suite's
# compilation cache only if test_train_step has compiled it by then (else both workers compile it at once).
SLOWEST_FIRST = ('test_train_step', 'test_train_resume', 'test_learning', 'test_unet', 'test_workdir', 'test_app',
                 'test_readme', 'test_evaluate', 'test_attention', 'test_diffusion_sampler_tiny', 'test_cli')


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
  items.sort(key=lambda item: rank.get(item.module.__name__.rpartition('.')[2], len(rank)))
