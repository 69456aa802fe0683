"""A training workdir used as a model: `sample`, `evaluate` and `export` accept W directly.

  gcd-jax sample   --checkpoint W --input clip.mp4 ...          # latest step, EMA weights if the run has them
  gcd-jax evaluate --checkpoint W --step 2000 --weights raw ...
  gcd-jax export   --to diffusers W --out folder/

`resolve_model(path, step, weights)` returns a model-checkpoint folder (the `gcd-jax convert` format that
every command reads). For a workdir it writes the chosen step once, as W/models/step_<N>_<ema|raw>/ (atomic;
reused by later calls, since a checkpoint step never changes), from:
* the network: W/checkpoints/<N>/state, only its `params` or `ema` subtree (Orbax partial restore: the Adam
  moments are never read);
* the frozen VAE + CLIP: W/frozen (written by the trainer at the run's first start: a fitted or random VAE
  / CLIP) or the run's `init_checkpoint`;
* the training config (W/config.json) into the folder's metadata as `train_config`, so that frame size,
  frame count, camera range and sampler settings come from the checkpoint.
No train step is compiled. `train --export DIR` writes the same folder at the end of a run.
"""

from __future__ import annotations

import json
import os

import ml_collections

CONFIG = 'config.json'
MODELS = 'models'


class WorkdirError(ValueError):
  """A workdir that cannot be used as a model (no checkpoint, unknown step, no EMA)."""


def add_step_arguments(parser, what: str) -> None:
  """--step / --weights of the commands that take a model or a training workdir (sample, evaluate, export)."""
  parser.add_argument('--step', type=int, default=None,
                      help=f'training workdir: checkpoint step to {what} (default: the latest)')
  parser.add_argument('--weights', choices=('auto', 'ema', 'raw'), default='auto',
                      help='training workdir: EMA or raw weights (default auto: EMA when the run keeps one)')


def is_workdir(path: str) -> bool:
  return os.path.isfile(os.path.join(path, CONFIG)) and os.path.isdir(os.path.join(path, 'checkpoints'))


def training_config(workdir: str) -> ml_collections.ConfigDict:
  with open(os.path.join(workdir, CONFIG)) as f:
    return ml_collections.ConfigDict(json.load(f))


def checkpoint_steps(workdir: str) -> list[int]:
  """Committed checkpoint steps (Orbax renames a step folder to its number only once it is complete)."""
  root = os.path.join(workdir, 'checkpoints')
  steps = [int(d) for d in os.listdir(root) if d.isdigit() and os.path.isdir(os.path.join(root, d, 'state'))]
  return sorted(steps)


def _model_config(config):
  from gcd_jax.convert import checkpoint_io  # pylint: disable=g-import-not-at-top
  return checkpoint_io.config_from_dict(config.model.to_dict())


def _frozen_source(workdir: str, config) -> str:
  from gcd_jax.train import trainer  # pylint: disable=g-import-not-at-top
  if os.path.isdir(trainer.frozen_dir(workdir)):
    return trainer.frozen_dir(workdir)
  if config.get('init_checkpoint'):
    if not os.path.isdir(config.init_checkpoint):
      raise WorkdirError(f'{workdir} took its VAE and CLIP from init_checkpoint {config.init_checkpoint}, which is '
                         f'gone; put that folder back or point init_checkpoint in {os.path.join(workdir, CONFIG)} '
                         'at a copy of it')
    # The trainer took VAE and CLIP from there; a workdir there means its latest step's raw weights
    # (trainer.weight_sources), exported once into ITS models/ folder.
    if is_workdir(config.init_checkpoint):
      return resolve_model(config.init_checkpoint, weights='raw', log=lambda *_: None)
    return config.init_checkpoint
  raise WorkdirError(f'{workdir} has no frozen/ folder and no init_checkpoint: its VAE and CLIP weights are '
                     'unknown (runs started before gcd-jax 0.2 did not save them); re-run training in a new workdir')


def restore_network_params(workdir: str, step: int, weights: str, net_layout) -> dict:
  """Flat network params of W/checkpoints/<step>/state ('params' or 'ema'), on the host."""
  import jax  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  path = os.path.join(os.path.abspath(workdir), 'checkpoints', str(step), 'state')
  abstract = net_layout.abstract_flat()
  item = {weights: abstract}
  restore_args = {weights: {n: ocp.ArrayRestoreArgs(sharding=jax.sharding.SingleDeviceSharding(jax.devices()[0]))
                            for n in abstract}}
  with ocp.PyTreeCheckpointer() as ckptr:
    got = ckptr.restore(path, args=ocp.args.PyTreeRestore(item=item, restore_args=restore_args,
                                                          partial_restore=True))
  return got[weights]


def has_ema(workdir: str) -> bool:
  return training_config(workdir).optim.get('ema_decay', 0.0) > 0


def export_step(workdir: str, out_dir: str, *, step: int, weights: str) -> str:
  """Writes W's step as a model checkpoint folder (network from the train state, frozen VAE/CLIP)."""
  from gcd_jax.convert import checkpoint_io  # pylint: disable=g-import-not-at-top
  from gcd_jax.train import train_step as ts  # pylint: disable=g-import-not-at-top
  config = training_config(workdir)
  model_cfg = _model_config(config)
  net_layout = ts.ParamLayout.of(checkpoint_io.abstract_module(model_cfg, 'network'))
  flat = restore_network_params(workdir, step, weights, net_layout)
  network = net_layout.module(flat)
  _, vae, clip = checkpoint_io.restore_model_checkpoint(_frozen_source(workdir, config), model_cfg,
                                                        components=('vae', 'clip'))
  meta = dict(source=dict(kind='gcd-jax train', workdir=os.path.abspath(workdir), step=int(step), weights=weights),
              train_config=json.loads(config.to_json_best_effort()))
  return checkpoint_io.save_model_checkpoint(out_dir, network, vae, clip, model_cfg, meta)


def resolve_model(path: str, *, step: int | None = None, weights: str = 'auto', log=print) -> str:
  """A model checkpoint folder for `path` (returned as is) or for a training workdir (exported once, see the
  module docstring). weights: 'auto' (EMA when the run keeps one), 'ema' or 'raw'."""
  if weights not in ('auto', 'ema', 'raw'):
    raise WorkdirError(f'--weights {weights!r}: choose auto, ema or raw')
  if not is_workdir(path):
    if step is not None or weights != 'auto':
      if os.path.isfile(os.path.join(path, 'metadata.json')):
        raise WorkdirError(f'{path} is an exported model (one set of weights): --step / --weights apply to '
                           'training workdirs only')
    return path
  steps = checkpoint_steps(path)
  if not steps:
    raise WorkdirError(f'training workdir {path} has no finished checkpoint yet; train longer or wait for the '
                       'first save (config.checkpoint.every_steps)')
  if step is None:
    step = steps[-1]
  elif step not in steps:
    raise WorkdirError(f'{path} has no checkpoint at step {step}; available steps: {steps}')
  ema = has_ema(path)
  if weights == 'auto':
    weights = 'ema' if ema else 'raw'
  elif weights == 'ema' and not ema:
    raise WorkdirError(f'{path} was trained without EMA (optim.ema_decay = 0); use --weights raw')
  weights = 'ema' if weights == 'ema' else 'params'
  out = os.path.join(path, MODELS, f'step_{step:08d}_{"ema" if weights == "ema" else "raw"}')
  if not os.path.isdir(out):
    os.makedirs(os.path.dirname(out), exist_ok=True)
    log(f'[gcd-jax] exporting step {step} ({"EMA" if weights == "ema" else "raw"} weights) of {path} to {out}')
    export_step(path, out, step=step, weights=weights)
  return out
