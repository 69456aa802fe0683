"""Training checkpoints: Orbax `CheckpointManager` (async) over the train state + the Grain iterator.

  W/checkpoints/<step>/state   params, Adam state, step, RNG key (+ EMA): one sharded PyTree (every host
                               writes its own shards; restore reads only the shards a host needs)
  W/checkpoints/<step>/data    Grain iterator position, one small JSON per process

Resume restores all of them. The restore target is the ABSTRACT state with the NamedShardings of the
CURRENT mesh, so a checkpoint written on 8 devices restores onto 4 (or 2 hosts × 2) unchanged.
A save is atomic (Orbax writes a tmp dir and renames it on commit): a run killed mid-save leaves the
previous step as the latest. `install_sigterm_handler` turns SIGTERM (preemption) into a flag the loop
checks after every step: it saves, waits for the commit, and exits.
"""

from __future__ import annotations

import os
import signal

import jax
import orbax.checkpoint as ocp

from gcd_jax.train import sharding as sh


def _data_handler():
  from data_pipelines.input_pipeline import checkpoint_handler  # pylint: disable=g-import-not-at-top
  return checkpoint_handler()


_ONE_REPLICA = False


def _write_each_shard_once():
  """Orbax's default 'replica-parallel' save splits every replicated array across its replicas, slicing
  each one eagerly on the host before the write: for a model of many small replicated parameters (the
  sharding rules keep arrays under `min_shard_size` whole) that took 5.5 s of each save's blocking part on
  8 CPU devices (py-spy; 22 of a tiny run's 90 s). Each shard is written by one replica instead; same
  files, same restore."""
  global _ONE_REPLICA
  if not _ONE_REPLICA:
    import jax  # pylint: disable=g-import-not-at-top
    ocp.type_handlers.register_type_handler(jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False),
                                            override=True)
    _ONE_REPLICA = True


def make_manager(directory: str, *, max_to_keep: int = 0, async_save: bool = True,
                 with_data: bool = True) -> ocp.CheckpointManager:
  """max_to_keep 0 keeps all (the reference keeps every checkpoint, §3)."""
  _write_each_shard_once()
  directory = os.path.abspath(directory)
  items = ('state', 'data') if with_data else ('state',)
  handlers = {'state': ocp.StandardCheckpointHandler()}
  if with_data:
    handlers['data'] = _data_handler()
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep or None, create=True,
                                         enable_async_checkpointing=async_save)
  return ocp.CheckpointManager(directory, item_names=items, item_handlers=handlers, options=options)


def save(manager: ocp.CheckpointManager, step: int, state, data_iter=None, *, force: bool = False) -> bool:
  import grain  # pylint: disable=g-import-not-at-top
  args = dict(state=ocp.args.StandardSave(state))
  if data_iter is not None:
    args['data'] = grain.checkpoint.CheckpointSave(data_iter)
  return manager.save(step, args=ocp.args.Composite(**args), force=force)


def restore(manager: ocp.CheckpointManager, abstract_state, spec_tree, mesh, data_iter=None, step: int | None = None):
  """→ (state on `mesh` with `spec_tree` shardings, step). data_iter (if given) is repositioned in place."""
  import grain  # pylint: disable=g-import-not-at-top
  step = manager.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f'no checkpoint in {manager.directory}')
  shardings = sh.named(mesh, spec_tree)
  target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_state, shardings)
  args = dict(state=ocp.args.StandardRestore(target))
  if data_iter is not None:
    args['data'] = grain.checkpoint.CheckpointRestore(data_iter)
  got = manager.restore(step, args=ocp.args.Composite(**args))
  return got['state'], step


class Preemption:
  """SIGTERM or SIGINT (Ctrl-C) → `requested` flag, checked by the loop after each step, which then saves a
  checkpoint and exits (the handler itself does no I/O beyond one line). A second SIGINT aborts at once
  (KeyboardInterrupt: nothing more is saved). `signal_name` says which signal asked."""

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.requested = False
    self.signal_name = ''
    self._old = {}

  def install(self):
    def handler(signum, frame):
      del frame
      if self.requested and signum == signal.SIGINT:
        raise KeyboardInterrupt
      self.requested = True
      self.signal_name = signal.Signals(signum).name
      more = '; Ctrl-C again aborts without saving' if signum == signal.SIGINT else ''
      print(f'[train] {self.signal_name} received: saving a checkpoint after this step, then exiting{more}',
            flush=True)
    import threading  # pylint: disable=g-import-not-at-top
    if threading.current_thread() is threading.main_thread():  # signal handlers live on the main thread
      self._old = {s: signal.signal(s, handler) for s in self.SIGNALS}
    return self

  @property
  def status(self) -> str:
    """The run's status after a signal: 'interrupted' (Ctrl-C, exit 130) or 'preempted' (SIGTERM, exit 143)."""
    return 'interrupted' if self.signal_name == 'SIGINT' else 'preempted'

  def uninstall(self):
    for s, old in self._old.items():
      signal.signal(s, old)
    self._old = {}
