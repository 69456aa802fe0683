"""Training metrics: TensorBoard (tensorboardX), a JSON-lines log, a progress line, FLOPs and MFU.

Writer choice: tensorboardX. `clu.metric_writers` imports TensorFlow and tensorboard at package import
(docs/dependencies.md), which this project does not install (TFDS runs TF-free); tensorboardX writes the same event
files with no TF. Only process 0 writes (multi-host runs would otherwise write N copies).

FLOPs per step come from XLA's cost analysis of the compiled train step (`compiled.cost_analysis()`,
summed over the program = per-device FLOPs for an SPMD program); TFLOP/s per device = flops / step time,
MFU = that / the device's peak (config.peak_tflops_per_device).
"""

from __future__ import annotations

import json
import os
import sys
import time

import jax
import numpy as np


def compiled_flops(compiled) -> float:
  """Per-device FLOPs of one execution of a compiled SPMD program (0 when XLA gives no estimate)."""
  try:
    ca = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except
    return 0.0
  if isinstance(ca, (list, tuple)):
    ca = ca[0] if ca else {}
  return float((ca or {}).get('flops', 0.0))


def compiled_memory(compiled) -> dict:
  """Per-device bytes from XLA's memory analysis: arguments, outputs, temporaries, generated code, aliased."""
  ma = compiled.memory_analysis()
  fields = ('argument_size_in_bytes', 'output_size_in_bytes', 'temp_size_in_bytes',
            'generated_code_size_in_bytes', 'alias_size_in_bytes')
  out = {f: int(getattr(ma, f, 0)) for f in fields}
  # Donated (aliased) outputs reuse their argument buffers.
  out['peak_estimate_bytes'] = (out['argument_size_in_bytes'] + out['output_size_in_bytes'] -
                                out['alias_size_in_bytes'] + out['temp_size_in_bytes'])
  return out


def truncate_after(path: str, step: int) -> None:
  """Drops the lines of a metrics.jsonl whose step is > step (atomically; no-op when there are none)."""
  if not os.path.exists(path):
    return
  with open(path) as f:
    lines = f.readlines()
  keep = []
  for line in lines:
    try:
      if int(json.loads(line)['step']) <= step:
        keep.append(line)
    except (ValueError, KeyError, TypeError):
      continue  # a torn last line of a killed run
  if len(keep) != len(lines):
    from gcd_jax import fileio  # pylint: disable=g-import-not-at-top
    fileio.write_text(path, ''.join(keep))


class MetricWriter:
  """Scalars to TensorBoard (W/tb) and W/metrics.jsonl; progress to stdout. No-op on processes ≠ 0."""

  def __init__(self, workdir: str, *, enabled: bool | None = None, start_step: int = 0):
    """start_step: the step training (re)starts from. Lines logged after it by an earlier, interrupted
    run are dropped, so that metrics.jsonl holds each step once after any resume."""
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self._tb = None
    self._jsonl = None
    if self.enabled:
      os.makedirs(workdir, exist_ok=True)
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._tb = SummaryWriter(os.path.join(workdir, 'tb'))
      path = os.path.join(workdir, 'metrics.jsonl')
      truncate_after(path, start_step)
      self._jsonl = open(path, 'a')

  def write(self, step: int, scalars: dict) -> None:
    if not self.enabled:
      return
    clean = {k: float(v) for k, v in scalars.items()}
    for k, v in clean.items():
      self._tb.add_scalar(k, v, step)
    self._jsonl.write(json.dumps(dict(step=int(step), **clean)) + '\n')
    self._jsonl.flush()

  def progress(self, step: int, total: int, scalars: dict) -> None:
    if not self.enabled:
      return
    keys = ('loss', 'grad_norm', 'steps_per_s', 'examples_per_s', 'tflops_per_device', 'mfu')
    parts = [f'{k}={scalars[k]:.4g}' for k in keys if k in scalars]
    print(f'[train] step {step}/{total} ' + ' '.join(parts), flush=True)
    sys.stdout.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
    if self._jsonl is not None:
      self._jsonl.close()


class Throughput:
  """steps/s, examples/s, TFLOP/s per device and MFU between successive `update` calls."""

  def __init__(self, flops_per_step: float, global_batch: int, peak_tflops: float):
    self.flops, self.batch, self.peak = flops_per_step, global_batch, peak_tflops
    self._t, self._step = None, None

  def update(self, step: int) -> dict:
    now = time.perf_counter()
    out = {}
    if self._t is not None and step > self._step:
      dt = (now - self._t) / (step - self._step)
      out = dict(steps_per_s=1.0 / dt, examples_per_s=self.batch / dt)
      if self.flops:
        out['tflops_per_device'] = self.flops / dt / 1e12
        if self.peak:
          out['mfu'] = out['tflops_per_device'] / self.peak
    self._t, self._step = now, step
    return out


def to_host(metrics: dict) -> dict:
  return {k: np.asarray(v) for k, v in jax.device_get(metrics).items()}
