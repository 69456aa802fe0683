"""Multi-host start-up: `jax.distributed.initialize` before anything touches devices.

* TPU pods, SLURM (srun), Open MPI: `initialize()` with no arguments auto-detects coordinator, process count
  and id from the environment (TPU metadata / SLURM_* / OMPI_* variables).
* Anything else (plain ssh, the local launcher): pass --coordinator HOST:PORT --num-processes N --process-id I.
A single process with none of these set skips initialisation.
"""

from __future__ import annotations

import os

import jax

_AUTO_ENV = ('SLURM_JOB_ID', 'OMPI_COMM_WORLD_SIZE', 'TPU_WORKER_HOSTNAMES', 'MEGASCALE_COORDINATOR_ADDRESS')


def initialize(coordinator: str = '', num_processes: int = 0, process_id: int = -1,
               local_device_ids=None) -> bool:
  """→ True when jax.distributed was initialised."""
  if coordinator:
    if num_processes <= 0 or process_id < 0:
      raise ValueError('--coordinator needs --num-processes and --process-id')
    jax.distributed.initialize(coordinator, num_processes, process_id, local_device_ids=local_device_ids)
    return True
  if any(k in os.environ for k in _AUTO_ENV) and int(os.environ.get('SLURM_NTASKS', '2')) > 1:
    jax.distributed.initialize()
    return True
  return False
