"""`gcd-jax` console script: one subcommand per user job.

Each subcommand lives in `gcd_jax/commands/<name>.py` exposing `add_arguments(parser)` and `run(args)`;
they are imported lazily so that `gcd-jax --help` stays fast and a subcommand's heavy imports (torch for
conversion, grain for data) are paid only when used. The module docstring of each command is its --help
text (first line: summary; the indented lines: examples).

Failures are one line on stderr, `gcd-jax COMMAND: error: WHAT (HOW TO FIX)`, with exit code 2 for usage
errors (bad arguments, configs or inputs the user named) and 1 for runtime failures; `--debug` (anywhere on
the line) or GCD_JAX_DEBUG=1 adds the traceback. Ctrl-C exits with 130 after the command's clean-up ran.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
import warnings

SUBCOMMANDS = {
    'convert': 'Convert sgm / diffusers / GCD .ckpt PyTorch weights into a gcd-jax model folder.',
    'export': 'Export a gcd-jax model (or a training workdir) back to sgm or diffusers safetensors.',
    'data': 'Build or preview datasets (procedural, Kubric-4D, ParallelDomain-4D).',
    'train': 'Train GCD from a config (multi-host aware).',
    'demo': 'The one-command demo: the packaged demo model on held-out procedural scenes, with baselines.',
    'evaluate': 'Batch sampling evaluation with PSNR/SSIM/LPIPS/mIoU over a test split.',
    'sample': 'Generate a new camera view of your own video, image folder or image.',
    'app': 'The interactive page (Gradio): pick a video, move the camera, see the generated view.',
}
# Commands whose arguments may include `--config.FIELD=VALUE` overrides of their --config file.
CONFIG_COMMANDS = ('train', 'evaluate', 'sample', 'demo')


class UsageError(ValueError):
  """Bad arguments or inputs named by the user: exit code 2."""


def version() -> str:
  try:
    from importlib.metadata import version as dist_version  # pylint: disable=g-import-not-at-top
    return dist_version('gcd-jax')
  except Exception:  # pylint: disable=broad-except
    return 'unknown'


def enable_compilation_cache() -> str:
  """JAX's persistent compilation cache, on for every command (a rerun of demo / sample / evaluate or a
  resume reuses the compiled programs instead of recompiling for minutes). Directory: $JAX_COMPILATION_CACHE_DIR
  if set, else $GCD_JAX_CACHE_DIR, else ~/.cache/gcd-jax/jax; GCD_JAX_CACHE_DIR=off disables it. Must run
  before jax is imported (JAX reads these variables when it loads)."""
  if os.environ.get('GCD_JAX_CACHE_DIR', '').lower() in ('off', '0', 'none'):
    return ''
  default = os.environ.get('GCD_JAX_CACHE_DIR') or os.path.join(os.path.expanduser('~'), '.cache', 'gcd-jax', 'jax')
  os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', default)
  os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.5')
  return os.environ['JAX_COMPILATION_CACHE_DIR']


_INTERRUPT_PENDING = []  # the time of a Ctrl-C raised as KeyboardInterrupt that main() has not yet reached


def deliver_ctrl_c_outside_finalizers() -> None:
  """Ctrl-C as KeyboardInterrupt, delivered even where Python or a library would drop it.

  * Never inside a garbage-collection callback or a finaliser: Python reports an exception raised there as
    'Exception ignored in …' and carries on, so a Ctrl-C that lands in, e.g., JAX's `_xla_gc_callback` was
    lost and the command ran to the end (exit 0, output written). There the handler re-sends the signal a
    moment later instead, when the main thread is back in ordinary code.
  * A KeyboardInterrupt raised inside a Python callback that C++ code calls can be caught and dropped there
    without a trace (seen once in the suite: `sample` ran to the end after Ctrl-C, exit 0, empty stderr). So
    the handler also arms a watchdog: if main() has not reached its KeyboardInterrupt branch 3 s later, the
    signal is sent again. Clean-up in `finally` blocks on the way up (removing a staging folder) takes
    milliseconds; the trainer installs its own SIGINT handler (finish the step, save, exit 130).
  """
  import gc  # pylint: disable=g-import-not-at-top
  import signal  # pylint: disable=g-import-not-at-top
  import threading  # pylint: disable=g-import-not-at-top
  import time  # pylint: disable=g-import-not-at-top

  def in_finalizer(frame) -> bool:
    callbacks = {getattr(cb, '__code__', None) for cb in gc.callbacks}
    while frame is not None:
      if frame.f_code in callbacks or frame.f_code.co_name == '__del__':
        return True
      frame = frame.f_back
    return False

  def resend_if_dropped(raised_at: float, signum: int) -> None:
    if _INTERRUPT_PENDING and _INTERRUPT_PENDING[-1] == raised_at:
      os.kill(os.getpid(), signum)

  def handler(signum, frame):
    if in_finalizer(frame):
      threading.Timer(0.05, os.kill, (os.getpid(), signum)).start()
      return
    raised_at = time.monotonic()
    _INTERRUPT_PENDING.append(raised_at)
    watchdog = threading.Timer(3.0, resend_if_dropped, (raised_at, signum))
    watchdog.daemon = True
    watchdog.start()
    raise KeyboardInterrupt

  main = threading.current_thread() is threading.main_thread()
  if main and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
    signal.signal(signal.SIGINT, handler)


def quiet_library_noise() -> None:
  """What users should not see. JAX registers an os.fork() warning; the only forks here are
  subprocess's fork+exec of ffmpeg (imageio-ffmpeg sets a preexec_fn so Ctrl-C does not kill it mid-write),
  which runs no Python in the child, so the warning is noise."""
  warnings.filterwarnings('ignore', message=r'os\.fork\(\) was called', category=RuntimeWarning)
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  absl_logging.set_verbosity(absl_logging.ERROR)  # TFDS's INFO/WARNING lines (variant folders, shuffling)
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  os.environ.setdefault('GRPC_VERBOSITY', 'ERROR')


class _Formatter(argparse.RawDescriptionHelpFormatter):
  """Keeps the docstring's layout (examples) and appends each option's default where its help does not
  already say it (flags and empty defaults have nothing to show)."""

  def _get_help_string(self, action):
    text = action.help or ''
    d = action.default
    if ('default' in text.lower() or d is None or d is argparse.SUPPRESS or isinstance(d, bool) or d == ''
        or not action.option_strings):
      return text
    return f'{text} (default: {d})'


class Parser(argparse.ArgumentParser):
  """argparse with one-line errors (raised, so main() reports them like every other usage error)."""

  def error(self, message):
    raise UsageError(f'{message} (see {self.prog} --help)')


def command_parser(name: str, module) -> Parser:
  doc = (module.__doc__ or SUBCOMMANDS[name]).strip('\n')
  parser = Parser(prog=f'gcd-jax {name}', description=doc, formatter_class=_Formatter)
  module.add_arguments(parser)
  parser.add_argument('--debug', action='store_true', help='show the traceback of an error (or GCD_JAX_DEBUG=1)')
  for action in parser._actions:  # pylint: disable=protected-access
    if isinstance(action, argparse._SubParsersAction):  # pylint: disable=protected-access
      for sub in action.choices.values():  # `data build` / `data show`: same help layout
        sub.formatter_class = _Formatter
  return parser


def build_parser() -> argparse.ArgumentParser:
  parser = Parser(prog='gcd-jax', description=__doc__.splitlines()[0],
                  epilog='Run `gcd-jax COMMAND --help` for the options and examples of a command.')
  parser.add_argument('--version', action='version', version=f'gcd-jax {version()}')
  sub = parser.add_subparsers(dest='command', metavar='COMMAND')
  for name, help_text in SUBCOMMANDS.items():
    p = sub.add_parser(name, help=help_text, description=help_text)
    p.set_defaults(_module=name)
    # Arguments are added lazily in main(), only for the chosen subcommand.
  return parser


def _message(e: BaseException) -> str:
  text = ' '.join(str(e).split()) or type(e).__name__
  if isinstance(e, KeyError) and e.args:
    text = str(e.args[0])
  return text if len(text) <= 600 else text[:560] + ' … (' + str(len(text)) + ' characters; --debug shows all)'


def _usage_errors() -> tuple:
  """Problems with what the user named (arguments, config, input files): exit code 2."""
  from gcd_jax.commands.data import DataArgumentError  # pylint: disable=g-import-not-at-top
  from gcd_jax.config_flags import ConfigError  # pylint: disable=g-import-not-at-top
  from gcd_jax.convert.sources import WrongFormatError  # pylint: disable=g-import-not-at-top
  from gcd_jax.evaluate.controls import ControlError  # pylint: disable=g-import-not-at-top
  from gcd_jax.evaluate.generator import ModelConfigError as CheckpointConfigError  # pylint: disable=g-import-not-at-top
  from gcd_jax.evaluate.inference import InputError  # pylint: disable=g-import-not-at-top
  from gcd_jax.evaluate.media import MediaError  # pylint: disable=g-import-not-at-top
  from gcd_jax.models.config import ConfigError as ModelConfigError  # pylint: disable=g-import-not-at-top
  from gcd_jax.train.workdir import WorkdirError  # pylint: disable=g-import-not-at-top
  return (UsageError, ConfigError, DataArgumentError, ControlError, InputError, MediaError, ModelConfigError,
          CheckpointConfigError, WrongFormatError, WorkdirError)


def _expected_errors() -> tuple:
  """Failures with a message written for users: no 'unexpected' hint."""
  return (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, PermissionError, KeyError,
          FloatingPointError, MemoryError)


def main(argv: list[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  debug = '--debug' in argv or os.environ.get('GCD_JAX_DEBUG', '') not in ('', '0')
  quiet_library_noise()
  deliver_ctrl_c_outside_finalizers()
  name = argv[0] if argv else ''
  prog = f'gcd-jax {name}' if name in SUBCOMMANDS else 'gcd-jax'
  try:
    if name not in SUBCOMMANDS:
      parser = build_parser()
      if not argv:
        parser.print_help()
        return 0
      parser.parse_args(argv)  # --help / --version exit here; anything else is a usage error
      raise UsageError(f'unknown command {name!r}; choose one of {", ".join(SUBCOMMANDS)}')
    enable_compilation_cache()
    from gcd_jax import hostmem  # pylint: disable=g-import-not-at-top
    hostmem.keep_freed_memory()  # before JAX starts its threads (docs/performance.md)
    module = importlib.import_module(f'gcd_jax.commands.{name}')
    rest = [a for a in argv[1:] if a != '--debug']  # accepted anywhere, also after a sub-action
    overrides = []
    if name in CONFIG_COMMANDS:
      from gcd_jax.config_flags import split_overrides  # pylint: disable=g-import-not-at-top
      rest, overrides = split_overrides(rest)
    args = command_parser(name, module).parse_args(rest)
    args.overrides = overrides
    args.debug = debug
    code = int(module.run(args) or 0)
    _INTERRUPT_PENDING.clear()  # a command that handled a Ctrl-C itself (the app's server loop) has returned
    return code
  except SystemExit as e:  # --help, --version
    return int(e.code or 0) if isinstance(e.code, int) or e.code is None else 2
  except KeyboardInterrupt:
    _INTERRUPT_PENDING.clear()  # reached: the watchdog of deliver_ctrl_c_outside_finalizers stands down
    print(f'{prog}: interrupted', file=sys.stderr, flush=True)
    _hard_exit(130)
  except BaseException as e:  # pylint: disable=broad-except
    usage = isinstance(e, _usage_errors())
    hint = '' if usage or isinstance(e, _expected_errors()) else (
        f' [unexpected {type(e).__name__}; rerun with --debug for the traceback and report it]')
    if debug:
      traceback.print_exc()
    print(f'{prog}: error: {_message(e)}{hint}', file=sys.stderr, flush=True)
    return 2 if usage else 1


def _hard_exit(code: int) -> None:
  """Leaves without interpreter teardown: after Ctrl-C, JAX's runtime threads may still be inside a
  computation, and tearing the interpreter down under them crashes (segfault). The command's own clean-up
  (staging folders, checkpoints) has already run in its finally blocks."""
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(code)


if __name__ == '__main__':
  sys.exit(main())
