"""Model presets as a config file, for `--config configs/models.py:PRESET[,key=value...]`.

The presets themselves live in the library (gcd_jax/models/presets.py); this file only exposes them to the
config loader, as every file under configs/ does: experiment files import the library, never the reverse.
"""

from gcd_jax.models.presets import get_config  # noqa: F401  pylint: disable=unused-import
