"""bench/tpu_compile.py's handling of a program the TPU compiler refuses for lack of HBM (no libtpu needed).

A `--fit` search compiles batch sizes past the chip's memory on purpose; the compiler's RESOURCE_EXHAUSTED is
then a result (fits: false, what was asked for), recorded and summarised, and the search steps down."""

from __future__ import annotations

import argparse
import importlib.util
import os

import pytest

from tests.fixtures_train import REPO

# The message libtpu 0.0.42 gave for the full-size train step at 5 videos/chip on v6e:2x4.
MESSAGE = ('RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO temporaries (33.21G) '
           'exceeds available HBM (31.25G).')


def _bench():
  spec = importlib.util.spec_from_file_location('tpu_compile', os.path.join(REPO, 'bench', 'tpu_compile.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_out_of_memory_is_a_record_and_a_summary(capsys, tmp_path):
  bench = _bench()
  rec = bench.out_of_memory(MESSAGE)
  assert rec['fits'] is False
  assert rec['refused'] == dict(what='HLO temporaries', required_gib=33.21, available_gib=31.25)
  # The form it gave at 4 videos/chip: over by 2.51 MiB.
  over = bench.out_of_memory('RESOURCE_EXHAUSTED: E1000: CompileTimeHbmOom: XLA:TPU compile permanent error. Ran '
                             'out of memory in memory space hbm. Used 31.25G of 31.25G hbm. Exceeded hbm capacity '
                             'by 2.51M.\n\nTotal hbm usage >= 31.50G:')
  assert over['fits'] is False and over['refused']['available_gib'] == 31.25
  assert abs(over['refused']['required_gib'] - (31.25 + 2.51 / 1024)) < 1e-9
  assert bench.out_of_memory('INTERNAL: unrelated failure') is None  # other errors still raise
  assert bench.out_of_memory('RESOURCE_EXHAUSTED: 512.00M needed')['fits'] is False  # unparsed sizes
  path = tmp_path / 'records.jsonl'
  bench.emit(dict(topology='v6e:2x4', slices=1, program='train', model='gcd', videos_per_chip=5, compile_s=1660.0,
                  **rec), str(path))
  out = capsys.readouterr().out
  assert ('SUMMARY train gcd on v6e:2x4×1 (5 video(s)/chip): DOES NOT FIT, HLO temporaries need 33.21 GiB of '
          '31.25 GiB available') in out
  assert path.read_text().count('\n') == 1


def test_bad_arguments_are_one_line(capsys):
  bench = _bench()
  for argv, want in ((['--batch-per-chip', '0'], '--batch-per-chip 0: must be at least 1'),
                     (['--height', '100'], 'multiples of 8')):
    with pytest.raises(SystemExit) as e:
      bench.parse_args(argv)
    assert e.value.code == 2
    assert want in capsys.readouterr().err
  assert bench.parse_args(['--fit']).batch_per_chip == 1


@pytest.mark.parametrize('fits_up_to,want', [(3, 'largest videos/chip = 3'), (9, 'largest videos/chip ≥ 5 (6 not')])
def test_fit_steps_down_and_says_when_the_count_is_exact(capsys, monkeypatch, fits_up_to, want):
  """`--fit` with the compiler stubbed by v6e:2x4's figures (7.95 GiB at 1 video, 13.55 at 2: the line predicts 5
  on 32 GiB). Compiles refused above `fits_up_to`: stepping down from 5 to 3 finds the exact largest count; a
  guess that fits at once is only a lower bound, and the summary says so."""
  bench = _bench()
  compiled = []

  def compile_one(args, cfg, mesh, chip, program, b):
    del args, cfg, mesh, chip
    compiled.append(b)
    base = dict(topology='v6e:2x4', slices=1, program=program, model='gcd', videos_per_chip=b, compile_s=1.0)
    if b > fits_up_to:
      return dict(base, **bench.out_of_memory(MESSAGE))
    return dict(base, fits=True, per_chip_gib=dict(peak=7.95 + 5.6 * (b - 1)))

  monkeypatch.setattr(bench, 'compile_one', compile_one)
  monkeypatch.setattr(bench, 'emit', lambda rec, path: None)
  bench.fit(argparse.Namespace(json=None), None, None, dict(name='v6e', hbm_gib=32))
  assert compiled == ([1, 2, 5, 4, 3] if fits_up_to == 3 else [1, 2, 5])
  assert f'FIT v6e: {want}' in capsys.readouterr().out
