"""Every command fails well: one table of bad inputs (exit code, one line on stderr, nothing written), the
signal handling of `sample`, file modes, --help and --version.

Most rows run `gcd_jax.cli.main` in this process (the same code path as the console script, no JAX compile:
every check fires before one); rows whose point is what a user's terminal shows (library noise, signals)
run the real `gcd-jax` in a subprocess. The train-side signal and resume rows live in test_train_resume.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from gcd_jax import cli, fileio
from gcd_jax.commands.demo import packaged_model
from tests.fixtures_train import subprocess_env

MODEL = packaged_model()  # 32×48, 6 frames, trained on Kubric-style max90 trajectories


@pytest.fixture(scope='module')
def clip(tmp_path_factory):
  from gcd_jax.evaluate import media
  path = str(tmp_path_factory.mktemp('clip') / 'clip.mp4')
  rng = np.random.default_rng(0)
  media.write_mp4(path, rng.integers(0, 255, (16, 48, 64, 3), dtype=np.uint8), fps=8)
  return path


def _listing(root):
  return sorted(os.path.relpath(os.path.join(d, n), root) for d, ds, fs in os.walk(root) for n in ds + fs)


def _sample(clip, out, *extra):
  return ['sample', '--checkpoint', MODEL, '--input', clip, '--out', out, '--no-progress', *extra]


# (name, argv builder (tmp, clip) → argv, expected exit code, words the one-line message must contain)
ROWS = [
    ('unknown config field', lambda t, c: ['train', '--config', 'configs/tiny.py', '--workdir', f'{t}/w',
                                           '--config.optim.lrr=1e-3'], 2, ['--config.optim.lr?']),
    ('unknown top-level field', lambda t, c: ['train', '--config', 'configs/tiny.py', '--workdir', f'{t}/w',
                                              '--config.batchsize=4'], 2, ['--config.batch_size']),
    ('bad preset argument', lambda t, c: ['train', '--config', 'configs/tiny.py:stepz=3', '--workdir', f'{t}/w'],
     2, ['stepz', 'steps']),
    ('missing config file', lambda t, c: ['train', '--config', 'nope.py', '--workdir', f'{t}/w'], 2,
     ['configs/tiny.py']),
    ('ill-typed override', lambda t, c: ['train', '--config', 'configs/tiny.py', '--workdir', f'{t}/w',
                                         '--config.optim.lr=fast'], 2, ['optim.lr']),
    ('negative batch', lambda t, c: ['train', '--config', 'configs/tiny.py', '--workdir', f'{t}/w',
                                     '--config.batch_size=-2'], 2, ['batch_size', '> 0']),
    ('negative learning rate', lambda t, c: ['train', '--config', 'configs/tiny.py', '--workdir', f'{t}/w',
                                             '--config.optim.lr=-1e-3'], 2, ['optim.lr', '> 0']),
    ('U-Net without ResBlocks', lambda t, c: ['train', '--config', 'configs/tiny.py', '--workdir', f'{t}/w',
                                              '--config.model.unet.num_res_blocks=0'], 2,
     ['unet.num_res_blocks=0', '≥ 1']),
    ('unknown attention implementation', lambda t, c: ['train', '--config', 'configs/tiny.py', '--workdir',
                                                       f'{t}/w', '--config.model.attention=splash'],
     2, ['attention', 'deferred']),
    ('multi-slice mesh on one slice', lambda t, c: ['train', '--config', 'configs/tiny.py', '--workdir', f'{t}/w',
                                                    '--config.mesh.dcn_shape=(2,1,1)'], 2,
     ['dcn_shape', '(1,1,1)']),
    ('batch not divisible by the mesh', lambda t, c: ['train', '--config', 'configs/tiny.py', '--workdir',
                                                      f'{t}/w', '--config.batch_size=3'], 2,
     ['multiple of 8', '--config.batch_size=']),
    ('dataset not built', lambda t, c: ['train', '--config', 'configs/gcd.py:data=kubric', '--workdir', f'{t}/w',
                                        f'--config.data.data_dir={t}/tfds', '--config.batch_size=8'], 1,
     ['gcd-jax data build kubric_4d', '--manual-dir']),
    ('missing required argument', lambda t, c: ['sample', '--checkpoint', MODEL, '--out', f'{t}/o'], 2,
     ['--input']),
    ('azimuth overflow', lambda t, c: _sample(c, f'{t}/o', '--azimuth', '1e9'), 2, ['--azimuth', '360']),
    ('elevation over the pole', lambda t, c: _sample(c, f'{t}/o', '--elevation', '720'), 2, ['--elevation']),
    ('radius far out', lambda t, c: _sample(c, f'{t}/o', '--radius', '-1000'), 2, ['--radius']),
    ('one sampler step', lambda t, c: _sample(c, f'{t}/o', '--steps', '1'), 2, ['steps=1', '≥ 2']),
    ('evaluate with one sampler step', lambda t, c: ['evaluate', '--checkpoint', MODEL, '--out', f'{t}/e',
                                                     '--steps', '1'], 1, ['--steps 1', '≥ 2']),
    ('motion bucket out of range', lambda t, c: _sample(c, f'{t}/o', '--motion-id', '300'), 2, ['0–255']),
    ('not a video', lambda t, c: _sample(_text_as_mp4(t), f'{t}/o'), 2, ['cannot read video']),
    ('overrides without --config', lambda t, c: _sample(c, f'{t}/o', '--config.unet.num_res_blocks=1'), 2,
     ['--config']),
    ('unknown builder config', lambda t, c: ['data', 'build', 'procedural_4d', '--config', 'huge', '--data-dir',
                                             f'{t}/tfds'], 2, ['tiny', 'demo']),
    ('missing manual dir', lambda t, c: ['data', 'build', 'kubric_4d', '--config', 'full', '--manual-dir',
                                         '/nonexistent', '--data-dir', f'{t}/tfds'], 2, ['--manual-dir']),
    ('empty manual dir', lambda t, c: ['data', 'build', 'kubric_4d', '--config', 'full', '--manual-dir',
                                       _empty_dir(t), '--data-dir', f'{t}/tfds'], 2, ['empty']),
    ('procedural cache in a missing folder', lambda t, c: ['data', 'build', 'procedural_4d', '--manual-dir',
                                                           '/nonexistent/cache', '--data-dir', f'{t}/tfds'], 2,
     ['parent folder']),
    ('show to an unknown format', lambda t, c: ['data', 'show', 'procedural_4d', '--out', f'{t}/s.webp',
                                                '--data-dir', f'{t}/tfds'], 2, ['.png', '.gif']),
    ('convert with the wrong --from', lambda t, c: ['convert', '--from', 'gcd-ckpt', _safetensors(t), '--config',
                                                    'tiny', '--out', f'{t}/ck'], 2, ['--from sgm']),
    ('demo with no samples', lambda t, c: ['demo', '--workdir', f'{t}/d', '--num-samples', '0'], 2,
     ['--num-samples 0', '≥ 1']),
    ('unknown command', lambda t, c: ['trian'], 2, ['invalid choice']),
]


def _text_as_mp4(tmp):
  path = os.path.join(tmp, 'inputs', 'notes.mp4')
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w') as f:
    f.write('these are notes, not a video\n' * 10)
  return path


def _empty_dir(tmp):
  path = os.path.join(tmp, 'inputs', 'empty')
  os.makedirs(path, exist_ok=True)
  return path


def _safetensors(tmp):
  from safetensors.numpy import save_file
  path = os.path.join(tmp, 'inputs', 'w.safetensors')
  os.makedirs(os.path.dirname(path), exist_ok=True)
  save_file({'x': np.zeros((2,), np.float32)}, path)
  return path


@pytest.mark.parametrize('name,argv,code,words', ROWS, ids=[r[0] for r in ROWS])
def test_bad_input_is_one_line_and_writes_nothing(name, argv, code, words, tmp_path, clip, capsys, monkeypatch):
  del name
  monkeypatch.chdir(tmp_path)  # relative config paths must resolve from anywhere
  args = argv(str(tmp_path), clip)
  before = _listing(tmp_path)
  rc = cli.main(args)
  err = capsys.readouterr().err
  lines = [l for l in err.splitlines() if l.strip()]
  assert rc == code, err
  assert len(lines) == 1 and lines[0].startswith('gcd-jax'), err
  assert 'Traceback' not in err
  for w in words:
    assert w in lines[0], (w, lines[0])
  assert _listing(tmp_path) == before, 'a failed command left files behind'


def test_camera_outside_the_trained_range_warns():
  from gcd_jax.evaluate import inference
  from gcd_jax.geometry import trajectory
  cfg = trajectory.trajectory_config('kubric_gradual_max90')
  seen = []
  assert inference.check_camera_request((180.0, 0.0, 0.0), cfg, warn=seen.append) == seen
  assert len(seen) == 1 and '--azimuth 180' in seen[0] and '[-90, 90]' in seen[0]
  assert inference.check_camera_request((45.0, 10.0, 1.0), cfg) == []
  cam = inference.camera_conditioning((180.0, 60.0, 0.0), 6, gradual=True, traj_cfg=cfg)
  assert 0 <= cam['motion_bucket_id'] <= 255  # clipped to the buckets the model was trained on


def test_outputs_respect_the_umask(tmp_path):
  old = os.umask(0o022)
  try:
    with fileio.atomic_dir(str(tmp_path / 'out')) as d:
      with fileio.atomic_file(os.path.join(d, 'a.json')) as f:
        open(f, 'w').write('{}')
    fileio.write_text(str(tmp_path / 'b.txt'), 'x')
  finally:
    os.umask(old)
  assert oct(os.stat(tmp_path / 'out').st_mode & 0o777) == oct(0o755)
  assert oct(os.stat(tmp_path / 'out' / 'a.json').st_mode & 0o777) == oct(0o644)
  assert oct(os.stat(tmp_path / 'b.txt').st_mode & 0o777) == oct(0o644)
  assert sorted(os.listdir(tmp_path)) == ['b.txt', 'out']  # no temporaries left


def test_atomic_dir_leaves_nothing_on_failure(tmp_path):
  with pytest.raises(RuntimeError):
    with fileio.atomic_dir(str(tmp_path / 'out')) as d:
      open(os.path.join(d, 'half.bin'), 'wb').write(b'x')
      raise RuntimeError('boom')
  assert os.listdir(tmp_path) == []
  (tmp_path / 'full').mkdir()
  (tmp_path / 'full' / 'keep').write_text('x')
  with pytest.raises(FileExistsError):
    with fileio.atomic_dir(str(tmp_path / 'full')):
      pass
  assert (tmp_path / 'full' / 'keep').read_text() == 'x'


def test_metrics_log_truncated_on_resume(tmp_path):
  from gcd_jax.train import metrics
  path = tmp_path / 'metrics.jsonl'
  path.write_text(''.join(f'{{"step": {s}, "loss": 1.0}}\n' for s in range(1, 7)) + '{"step": 7, "lo')
  metrics.truncate_after(str(path), 4)
  assert [l for l in path.read_text().splitlines()] == [f'{{"step": {s}, "loss": 1.0}}' for s in range(1, 5)]


def _leaf_parsers(parser):
  """(parser, argv prefix) of a command and of each of its sub-actions (`data build`, `data show`)."""
  import argparse  # pylint: disable=g-import-not-at-top
  subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]  # pylint: disable=protected-access
  if not subs:
    return [(parser, [])]
  return [(p, [name]) for name, p in subs[0].choices.items()]


@pytest.mark.parametrize('command', list(cli.SUBCOMMANDS))
def test_help_describes_every_option(command, capsys):
  import importlib  # pylint: disable=g-import-not-at-top
  parser = cli.command_parser(command, importlib.import_module(f'gcd_jax.commands.{command}'))
  assert '\n  gcd-jax ' in (parser.description or ''), f'{command} --help shows no example'
  for leaf, prefix in _leaf_parsers(parser):
    assert cli.main([command, *prefix, '--help']) == 0
    out = capsys.readouterr().out
    assert f'gcd-jax {command}' in out
    actions = [a for a in leaf._actions if a.option_strings and a.dest != 'help']  # pylint: disable=protected-access
    for a in actions:
      assert a.help, f'{command} {" ".join(prefix)} {a.option_strings[0]} has no help'
    if any(a.default not in (None, False, '') for a in actions):
      assert 'default' in out, out


def test_version(capsys):
  assert cli.main(['--version']) == 0
  assert capsys.readouterr().out.startswith('gcd-jax ')


@pytest.fixture
def children_get_ctrl_c():
  """A pytest started in the background by a non-interactive shell (`pytest … &`) ignores SIGINT, and ignored
  signals stay ignored across exec: the commands these tests start would then never see Ctrl-C (and rightly:
  `gcd-jax` keeps a SIG_IGN it inherits, as `nohup` users expect). Handled here, children start with SIGINT
  at its default."""
  previous = signal.getsignal(signal.SIGINT)
  if previous == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
  yield
  signal.signal(signal.SIGINT, previous)


@pytest.mark.usefixtures('children_get_ctrl_c')
def test_sigint_during_sample_exits_130_and_writes_nothing(tmp_path, clip):
  """Ctrl-C while the sampler compiles or runs: exit 130, one line, no output folder, no crash (it used to
  end in a segmentation fault)."""
  out = tmp_path / 'o'
  env = subprocess_env(1, '')
  env['GCD_JAX_CACHE_DIR'] = 'off'
  env.pop('JAX_COMPILATION_CACHE_DIR', None)  # a cache hit could finish before the signal
  proc = subprocess.Popen([sys.executable, '-m', 'gcd_jax.cli', *_sample(clip, str(out))], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(tmp_path))
  deadline = time.time() + 300
  line = ''
  while time.time() < deadline and 'compiling' not in line:
    line = proc.stdout.readline()
    if not line and proc.poll() is not None:
      break
  time.sleep(1.0)
  proc.send_signal(signal.SIGINT)
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == 130, err
  assert [l for l in err.splitlines() if l.strip()] == ['gcd-jax sample: interrupted'], err
  assert os.listdir(tmp_path) == [], os.listdir(tmp_path)


@pytest.mark.usefixtures('children_get_ctrl_c')
def test_a_dropped_ctrl_c_is_sent_again(tmp_path):
  """A KeyboardInterrupt that something catches and drops (as a C++ → Python callback boundary can) is
  followed, 3 s later, by the signal again, so Ctrl-C still ends the command."""
  script = tmp_path / 'dropper.py'
  script.write_text(textwrap.dedent('''
      import sys, time
      from gcd_jax import cli
      cli.deliver_ctrl_c_outside_finalizers()
      try:
        try:
          print('ready', flush=True)
          time.sleep(60)
        except KeyboardInterrupt:
          print('dropped', flush=True)  # swallowed, as a library might
        time.sleep(60)
        sys.exit(0)
      except KeyboardInterrupt:
        sys.exit(130)
      '''))
  proc = subprocess.Popen([sys.executable, str(script)], env=subprocess_env(1, ''), stdout=subprocess.PIPE,
                          text=True)
  assert proc.stdout.readline().strip() == 'ready'
  start = time.time()
  proc.send_signal(signal.SIGINT)
  out, _ = proc.communicate(timeout=60)
  assert proc.returncode == 130 and out.strip() == 'dropped', (proc.returncode, out)
  assert 2.5 < time.time() - start < 30


def test_library_noise_is_hidden(tmp_path, clip):
  """A whole `gcd-jax sample` run: stderr holds no fork warning, no ffmpeg banner, no TFDS lines; the
  output folder and files get the umask's modes."""
  out = tmp_path / 'o'
  env = subprocess_env(1, '')
  r = subprocess.run([sys.executable, '-m', 'gcd_jax.cli', *_sample(clip, str(out), '--num-samples', '1',
                                                                    '--steps', '2')],
                     env=env, capture_output=True, text=True, cwd=str(tmp_path), timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  for noise in ('os.fork', 'ffmpeg version', 'Downloading', 'Traceback'):
    assert noise not in r.stderr, r.stderr
  assert oct(os.stat(out).st_mode & 0o777) == oct(0o755)
  assert all(oct(os.stat(out / f).st_mode & 0o777) == oct(0o644) for f in os.listdir(out))


def test_commands_run_from_any_directory(tmp_path):
  r = subprocess.run([sys.executable, '-m', 'gcd_jax.cli', 'train', '--config', 'configs/tiny.py', '--workdir',
                      str(tmp_path / 'w'), '--config.optim.lr=-1'], env=subprocess_env(1, ''),
                     capture_output=True, text=True, cwd=str(tmp_path), timeout=300)
  assert r.returncode == 2 and r.stderr.strip().count('\n') == 0, r.stderr
  assert 'optim.lr' in r.stderr and not os.path.exists(tmp_path / 'w')
