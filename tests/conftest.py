"""Test-wide setup: 8 fake CPU devices (sharding tests), CPU only, absl flags parsed (Grain workers)."""

import os

os.environ.setdefault('JAX_PLATFORMS', 'cpu')
# Must be set before jax initialises its backend: sharding tests need an 8-device mesh on one CPU.
if '--xla_force_host_platform_device_count' not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                             ' --xla_force_host_platform_device_count=8').strip()

from absl import flags  # pylint: disable=g-import-not-at-top

flags.FLAGS.mark_as_parsed()  # Grain worker processes read absl flags.
