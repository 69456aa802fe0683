r"""Peak memory and wall time of `gcd-jax convert` on a full-size random sgm `svd.safetensors`.

  python bench/convert_memory.py                 # full size (~9.4 GB file; needs ~20 GB free in --tmp)
  python bench/convert_memory.py --config tiny   # seconds, to check the script itself

1. Derives every key and shape of Stability's `svd.safetensors` from the abstract (nnx.eval_shape)
   full-size modules through our key mapping (`sgm_keys.py`): U-Net, conditioning encoder +
   quant_conv, its unused 2-D decoder + post_quant_conv, the target-path encoder copy, the temporal
   decoder, the OpenCLIP ViT-H/14 image tower (docs/weights.md §2a). No camera layers, like the real file.
2. Writes it with random float32 data, one tensor at a time (never all in RAM).
3. Converts it in a SUBPROCESS (`gcd-jax convert --from sgm ... --config gcd --init-missing`) and reads
   that process's exact peak resident set size from `os.wait4` (ru_maxrss).
4. Unless --no-export: exports the checkpoint back to sgm (`gcd-jax export`, also a subprocess,
   peak RSS measured the same way) and checks, tensor by tensor, that every tensor the model holds is
   bit-identical to the input file (the full-size round trip).
5. Prints (and writes --json) wall time, peak RSS and the ratio to the file size (goal ≤ 1.3), then
   deletes the temporary folder (unless --keep).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zlib

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gcd_jax.convert import checkpoint_io, convert as conv, sgm_keys, sources  # noqa: E402
from gcd_jax.convert.torch_layout import leaf_specs  # noqa: E402

GOAL = 1.3


def svd_file_shapes(cfg) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
  """({sgm key: shape} of an SVD-style file for `cfg` (camera layers excluded), {dup: src key})."""
  specs = {c: leaf_specs(checkpoint_io.abstract_module(cfg, c)) for c in checkpoint_io.COMPONENTS}
  maps = conv.make_maps('sgm', cfg, specs)
  shapes = conv.expected_file_shapes(maps, specs)
  dups = sgm_keys.sgm_duplicates(maps)
  for dup, src in dups.items():
    shapes[dup] = shapes[src]
  shapes = {k: s for k, s in shapes.items()
            if not k.startswith((sgm_keys.UNET_PREFIX + 'aux_label_emb.', sgm_keys.CAMERA_PREFIX))}
  # The unused 2-D decoder of conditioner.embedders.3 (AutoencoderKLModeOnly): the temporal decoder
  # without its time_stack / mix_factor / time_mix_conv, and a post_quant_conv (docs/weights.md §2a).
  dec = sgm_keys.FIRST_STAGE_PREFIX + 'decoder.'
  for k, s in list(shapes.items()):
    if k.startswith(dec) and not any(t in k for t in ('time_stack', 'mix_factor', 'time_mix_conv')):
      shapes[sgm_keys.COND_VAE_PREFIX + 'decoder.' + k[len(dec):]] = s
  z = cfg.vae.latent_channels
  shapes[sgm_keys.COND_VAE_PREFIX + 'post_quant_conv.weight'] = (z, z, 1, 1)
  shapes[sgm_keys.COND_VAE_PREFIX + 'post_quant_conv.bias'] = (z,)
  return shapes, dups


def write_random(path: str, shapes: dict, same_as: dict[str, str], seed: int = 0) -> int:
  """Random N(0, 0.02²) float32 tensors; `same_as` {dup: src} copies get the same data (as in SVD)."""

  def produce(key):
    rng = np.random.default_rng([seed, zlib.crc32(same_as.get(key, key).encode())])
    a = rng.standard_normal(shapes[key], dtype=np.float32)
    a *= 0.02
    return a
  return sources.write_safetensors(path, [(k, shapes[k], np.float32) for k in sorted(shapes)],
                                   produce)


def _run(cmd, env) -> tuple[int, int]:
  """(exit code, peak RSS in bytes) of a child process (exact, from the kernel's rusage)."""
  proc = subprocess.Popen(cmd, env=env, cwd=os.path.dirname(os.path.dirname(os.path.abspath(
      __file__))))
  _, status, usage = os.wait4(proc.pid, 0)
  return os.waitstatus_to_exitcode(status), usage.ru_maxrss * 1024  # kilobytes on Linux


def _compare(src: str, back: str) -> dict:
  """Every tensor of the exported file equals the input's, bit for bit (streamed)."""
  with sources.SafetensorsFile(src) as a, sources.SafetensorsFile(back) as b:
    dropped = sorted(set(a.keys()) - set(b.keys()))
    added = sorted(set(b.keys()) - set(a.keys()))  # the camera layers --init-missing created
    differ = [k for k in b.keys() if k in a.shapes and (
        a.dtypes[k] != b.dtypes[k] or not np.array_equal(a.read(k), b.read(k)))]
  return dict(roundtrip_tensors_compared=len(b.shapes) - len(added),
              roundtrip_not_bit_exact=len(differ), roundtrip_dropped_unused=len(dropped),
              roundtrip_added_camera=len(added))


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--config', default='gcd', help='model preset to convert into (default gcd)')
  p.add_argument('--tmp', default='/tmp', help='where the temporary folder goes')
  p.add_argument('--keep', action='store_true', help='keep the temporary folder')
  p.add_argument('--json', default=None, help='also write the results here')
  p.add_argument('--no-export', action='store_true', help='skip the export + round-trip check')
  args = p.parse_args(argv)

  cfg = conv.load_model_config(args.config)
  work = tempfile.mkdtemp(prefix='gcd_convert_bench_', dir=args.tmp)
  try:
    src = os.path.join(work, 'svd.safetensors')
    t = time.time()
    shapes, dups = svd_file_shapes(cfg)
    t_keys = time.time() - t
    t = time.time()
    size = write_random(src, shapes, dups)
    t_write = time.time() - t
    print(f'wrote {len(shapes)} tensors, {size / 1e9:.3f} GB in {t_write:.0f} s '
          f'(keys derived in {t_keys:.0f} s)', flush=True)
    out = os.path.join(work, 'ckpt')
    cmd = [sys.executable, '-m', 'gcd_jax.cli', 'convert', '--from', 'sgm', src, '--config',
           args.config, '--out', out, '--init-missing', '--no-progress']
    env = dict(os.environ, JAX_PLATFORMS='cpu')
    t = time.time()
    rc, peak = _run(cmd, env)
    wall = time.time() - t
    out_size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(out) for f in fs) \
        if os.path.isdir(out) else 0
    result = dict(config=args.config, tensors=len(shapes), file_bytes=size, convert_wall_s=round(wall, 1),
                  peak_rss_bytes=peak, peak_rss_over_file=round(peak / size, 3), goal=GOAL,
                  exit_code=rc, output_bytes=out_size, write_s=round(t_write, 1))
    if not args.no_export and rc == 0:
      back = os.path.join(work, 'back.safetensors')
      t = time.time()
      erc, epeak = _run([sys.executable, '-m', 'gcd_jax.cli', 'export', '--to', 'sgm', out, '--out',
                         back, '--no-progress'], env)
      result.update(export_wall_s=round(time.time() - t, 1), export_peak_rss_bytes=epeak,
                    export_exit_code=erc)
      if erc == 0:
        result.update(_compare(src, back))
    print(json.dumps(result, indent=2))
    print(f'peak RSS {peak / 1e9:.2f} GB = {peak / size:.2f} × file size {size / 1e9:.2f} GB '
          f'(goal ≤ {GOAL}); conversion {wall:.0f} s; exit code {rc}')
    if args.json:
      with open(args.json, 'w') as f:
        json.dump(result, f, indent=2)
    ok = rc == 0 and peak / size <= GOAL and not result.get('roundtrip_not_bit_exact')
    return 0 if ok else 1
  finally:
    if not args.keep:
      shutil.rmtree(work, ignore_errors=True)


if __name__ == '__main__':
  sys.exit(main())
