"""Multi-host start-up: `jax.distributed.initialize` before anything touches devices.

* TPU pods, SLURM (srun), Open MPI: `initialize()` with no arguments auto-detects coordinator, process count
  and id from the environment (TPU metadata / SLURM_* / OMPI_* variables).
* Anything else (plain ssh, the local launcher): pass --coordinator HOST:PORT --num-processes N --process-id I.
A single process with none of these set skips initialisation.
"""

from __future__ import annotations

import os

import jax

def _multi_host_env() -> bool:
  """True under a multi-task SLURM step, Open MPI, or on a multi-worker Cloud TPU slice."""
  if int(os.environ.get('SLURM_NTASKS', '1')) > 1 and 'SLURM_STEP_ID' in os.environ:
    return True
  if int(os.environ.get('OMPI_COMM_WORLD_SIZE', '1')) > 1:
    return True
  hosts = os.environ.get('TPU_WORKER_HOSTNAMES', '')
  return len([h for h in hosts.split(',') if h]) > 1


def initialize(coordinator: str = '', num_processes: int = 0, process_id: int = -1,
               local_device_ids=None) -> bool:
  """→ True when jax.distributed was initialised."""
  if coordinator:
    if num_processes <= 0 or process_id < 0:
      raise ValueError('--coordinator needs --num-processes and --process-id')
    jax.distributed.initialize(coordinator, num_processes, process_id, local_device_ids=local_device_ids)
    return True
  if _multi_host_env():
    jax.distributed.initialize()  # coordinator / count / id from the cluster environment
    return True
  return False
