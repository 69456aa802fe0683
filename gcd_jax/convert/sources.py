"""Readers (and a streaming writer) for the PyTorch weight files we convert from and export to.

* `SafetensorsFile`: a lazy safetensors reader that parses the header once and reads each tensor with
  a plain positioned read (no mmap). Why not `safe_open`: it maps the whole file, and the pages of a
  9.6 GB `svd.safetensors` that were touched count towards the converter's resident memory; with
  positioned reads only the destination buffers do (bench/convert_memory.py). The header is validated
  up front, so a truncated or corrupt file fails before anything is written.
* `write_safetensors`: streams tensors into a new file one at a time (header first, from the shapes),
  via a temporary file renamed at the end.
* `open_lightning_checkpoint`: a GCD Lightning `.ckpt` through `torch.load(weights_only=True,
  mmap=True)`; a file that needs arbitrary pickled code is refused (`UnsafeCheckpointError`), never run.
* `SgmSource`, `DiffusersSource`, `CkptSource`: the three input formats behind one interface
  (`shapes` {key: PyTorch shape}, `read(key) -> np.ndarray`, `close()`).
"""

from __future__ import annotations

import fnmatch
import json
import os
import struct
import warnings
from typing import Callable, Iterable, Mapping

import ml_dtypes
import numpy as np

from gcd_jax.convert import sgm_keys

_ST_DTYPES = {
    'F64': np.dtype(np.float64), 'F32': np.dtype(np.float32), 'F16': np.dtype(np.float16),
    'BF16': np.dtype(ml_dtypes.bfloat16), 'I64': np.dtype(np.int64), 'I32': np.dtype(np.int32),
    'I16': np.dtype(np.int16), 'I8': np.dtype(np.int8), 'U8': np.dtype(np.uint8),
    'BOOL': np.dtype(np.bool_),
}
_NP_TO_ST = {v: k for k, v in _ST_DTYPES.items()}
_MAX_HEADER = 100 * 2 ** 20  # safetensors' own limit


class WeightFileError(ValueError):
  """A weight file that cannot be read: missing, truncated, corrupt, or of the wrong kind."""


class UnsafeCheckpointError(WeightFileError):
  """A pickle checkpoint that needs arbitrary code to load (refused, never executed)."""


class SafetensorsFile:
  """Lazy safetensors reader: `shapes`, `dtypes`, `read(key)`, `read_into(key, out)`.

  Every tensor's byte range is checked against the file size when the file is opened.
  """

  def __init__(self, path: str | os.PathLike):
    self.path = os.fspath(path)
    if not os.path.exists(self.path):
      raise WeightFileError(f'{self.path}: no such file')
    if os.path.isdir(self.path):
      raise WeightFileError(f'{self.path} is a directory, expected a .safetensors file')
    size = os.path.getsize(self.path)
    self._f = open(self.path, 'rb')
    try:
      head = self._f.read(8)
      if len(head) < 8:
        raise WeightFileError(f'{self.path}: {size} bytes, too short to be a safetensors file '
                              '(truncated or not safetensors)')
      (n,) = struct.unpack('<Q', head)
      if n > _MAX_HEADER or 8 + n > size:
        raise WeightFileError(f'{self.path}: header length {n} does not fit in the {size}-byte file '
                              '(truncated download, or not a safetensors file)')
      try:
        header = json.loads(self._f.read(n))
      except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WeightFileError(f'{self.path}: corrupt safetensors header ({e})') from e
      self.metadata = header.pop('__metadata__', None) or {}
      self.shapes, self.dtypes, self._ranges = {}, {}, {}
      self._data_start = 8 + n
      problems = []
      for key, info in header.items():
        dt = _ST_DTYPES.get(info.get('dtype'))
        if dt is None:
          raise WeightFileError(f'{self.path}: tensor {key} has unsupported dtype {info.get("dtype")}')
        shape = tuple(int(s) for s in info['shape'])
        begin, end = (int(x) for x in info['data_offsets'])
        if end - begin != int(np.prod(shape, dtype=np.int64)) * dt.itemsize:
          raise WeightFileError(f'{self.path}: tensor {key} byte range {begin}..{end} does not match '
                                f'shape {shape} {dt} (corrupt header)')
        if self._data_start + end > size:
          problems.append((key, self._data_start + end))
        self.shapes[key], self.dtypes[key], self._ranges[key] = shape, dt, (begin, end)
      if problems:
        last = max(p[1] for p in problems)
        raise WeightFileError(
            f'{self.path} is truncated: it has {size} bytes but its header needs {last} '
            f'({len(problems)} tensor(s) lie past the end, e.g. {problems[0][0]}). Re-download or '
            're-export the file.')
    except Exception:
      self._f.close()
      raise

  def keys(self):
    return self.shapes.keys()

  def nbytes(self, key: str) -> int:
    begin, end = self._ranges[key]
    return end - begin

  def read_into(self, key: str, out: np.ndarray) -> np.ndarray:
    """Reads tensor `key` into `out` (C-contiguous, same dtype and size)."""
    begin, end = self._ranges[key]
    view = memoryview(out.reshape(-1).view(np.uint8))
    if view.nbytes != end - begin:
      raise ValueError(f'{key}: destination has {view.nbytes} bytes, tensor {end - begin}')
    got = os.preadv(self._f.fileno(), [view], self._data_start + begin) if end > begin else 0
    while got < end - begin:  # preadv may return short reads on some filesystems
      n = os.preadv(self._f.fileno(), [view[got:]], self._data_start + begin + got)
      if n == 0:
        raise WeightFileError(f'{self.path}: unexpected end of file while reading {key}')
      got += n
    return out

  def read(self, key: str) -> np.ndarray:
    if key not in self._ranges:
      raise KeyError(f'{self.path}: no tensor {key!r}')
    return self.read_into(key, np.empty(self.shapes[key], self.dtypes[key]))

  def close(self):
    self._f.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def write_safetensors(path: str | os.PathLike, specs: Iterable[tuple[str, tuple[int, ...], np.dtype]],
                      produce: Callable[[str], np.ndarray], *, metadata: Mapping[str, str] | None = None,
                      progress: Callable[[int], None] | None = None) -> int:
  """Writes a safetensors file tensor by tensor; `produce(key)` returns each array in turn.

  specs: (key, shape, dtype) in file order. The header is written first, so only one tensor is in
  memory at a time. Goes through a temporary file in the same folder, renamed at the end (no partial
  file on failure). Returns the file size.
  """
  path = os.fspath(path)
  specs = [(k, tuple(int(s) for s in shape), np.dtype(dt)) for k, shape, dt in specs]
  header, offset = {}, 0
  if metadata:
    header['__metadata__'] = {str(k): str(v) for k, v in metadata.items()}
  for key, shape, dt in specs:
    n = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
    header[key] = {'dtype': _NP_TO_ST[dt], 'shape': list(shape), 'data_offsets': [offset, offset + n]}
    offset += n
  blob = json.dumps(header, separators=(',', ':')).encode()
  blob += b' ' * (-len(blob) % 8)  # 8-byte alignment of the data section, as safetensors does
  from gcd_jax import fileio  # pylint: disable=g-import-not-at-top
  with fileio.atomic_file(path) as tmp, open(tmp, 'wb') as f:
    f.write(struct.pack('<Q', len(blob)))
    f.write(blob)
    for key, shape, dt in specs:
      a = np.asarray(produce(key))
      if a.shape != shape:
        raise ValueError(f'{key}: produced shape {a.shape}, header says {shape}')
      f.write(memoryview(np.ascontiguousarray(a, dtype=dt).reshape(-1).view(np.uint8)))
      del a
      if progress is not None:
        progress(1)
  return 8 + len(blob) + offset


# ---------------------------------------------------------------------------------------------------
# Lightning .ckpt


def open_lightning_checkpoint(path: str | os.PathLike) -> dict:
  """The `state_dict` of a GCD Lightning checkpoint, tensors memory-mapped (not read yet).

  Only `torch.load(weights_only=True)` is ever used: a checkpoint whose pickle references arbitrary
  Python objects is refused with UnsafeCheckpointError and nothing in it runs. A bare state dict
  (sgm keys at the top level) is accepted too.
  """
  import pickle  # pylint: disable=g-import-not-at-top
  import zipfile  # pylint: disable=g-import-not-at-top
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise WeightFileError('reading a Lightning .ckpt needs PyTorch (CPU is enough): '
                          'pip install torch==2.13.0') from e
  path = os.fspath(path)
  if not os.path.exists(path):
    raise WeightFileError(f'{path}: no such file')
  if os.path.isdir(path):
    raise WeightFileError(f'{path} is a directory, expected a Lightning .ckpt file')
  try:
    obj = torch.load(path, map_location='cpu', weights_only=True, mmap=True)
  except pickle.UnpicklingError as e:
    raise UnsafeCheckpointError(
        f'{path}: refusing to load: the checkpoint needs arbitrary pickled Python objects that the '
        f'safe (weights_only) loader does not allow, and running them could execute code. It was NOT '
        f'loaded. If you trust its origin, re-save only its tensors (e.g. torch.save({{"state_dict": '
        f'ckpt["state_dict"]}}, ...)) and convert that. Details: {str(e).splitlines()[0]}') from None
  except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    if 'mmap' in msg and 'zipfile' in msg or 'legacy' in msg:
      raise WeightFileError(f'{path}: not a zip-format torch checkpoint ({msg}); only torch.save '
                            'zip files (PyTorch ≥ 1.6, what Lightning writes) can be memory-mapped') from e
    raise WeightFileError(f'{path}: cannot read the checkpoint (truncated or not a torch checkpoint): '
                          f'{msg}') from e
  if not isinstance(obj, dict):
    raise WeightFileError(f'{path}: expected a dict (Lightning checkpoint), got {type(obj).__name__}')
  sd = obj.get('state_dict', None)
  if sd is None:
    if any(isinstance(k, str) and k.startswith(sgm_keys.UNET_PREFIX) for k in obj):
      sd = obj
    else:
      raise WeightFileError(f'{path}: no "state_dict" entry (top-level keys: '
                            f'{sorted(map(str, obj))[:10]}); is this a GCD/sgm Lightning checkpoint?')
  bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
  if bad:
    raise WeightFileError(f'{path}: state_dict entries that are not tensors: {bad[:10]}')
  return sd


def _torch_to_numpy(t) -> np.ndarray:
  import torch  # pylint: disable=g-import-not-at-top
  t = t.detach()
  if t.dtype == torch.bfloat16:
    return t.contiguous().view(torch.int16).numpy().view(ml_dtypes.bfloat16).copy()
  return t.contiguous().numpy().copy()


# ---------------------------------------------------------------------------------------------------
# Sources: {key: shape} + read(key)


class Source:
  """Base: `shapes` {file key: torch shape}, `read(key)`, `dtypes`, `ignored`, `close()`."""
  kind = ''
  path = ''

  def __init__(self):
    self.shapes: dict[str, tuple[int, ...]] = {}
    self.dtypes: dict[str, np.dtype] = {}
    self.ignored: list[str] = []   # keys dropped on purpose (documented lists)
    self.warnings: list[str] = []

  def read(self, key: str) -> np.ndarray:
    raise NotImplementedError

  def close(self):
    pass

  def _drop(self, patterns: Iterable[str]) -> list[str]:
    pats = tuple(patterns)
    dropped = [k for k in self.shapes if any(fnmatch.fnmatchcase(k, p) for p in pats)]
    for k in dropped:
      del self.shapes[k]
    return dropped


class SgmSource(Source):
  """Stability's sgm `svd.safetensors` (one flat file, sgm keys)."""
  kind = 'sgm'

  def __init__(self, path):
    super().__init__()
    self.path = os.fspath(path)
    self._file = SafetensorsFile(self.path)
    self.shapes = dict(self._file.shapes)
    self.dtypes = dict(self._file.dtypes)
    self.ignored = self._drop(sgm_keys.SGM_IGNORED)

  def read(self, key):
    return self._file.read(key)

  def close(self):
    self._file.close()


class CkptSource(Source):
  """GCD Lightning `.ckpt` (sgm keys in `state_dict`, plus camera layers, LPIPS, maybe EMA)."""
  kind = 'gcd-ckpt'

  def __init__(self, path):
    super().__init__()
    self.path = os.fspath(path)
    self._sd = open_lightning_checkpoint(self.path)
    self.shapes = {k: tuple(v.shape) for k, v in self._sd.items()}
    self.dtypes = {k: np.dtype(str(v.dtype).replace('torch.', '')) if 'bfloat16' not in str(v.dtype)
                   else np.dtype(ml_dtypes.bfloat16) for k, v in self._sd.items()}
    ema = self._drop(sgm_keys.CKPT_EMA)
    if ema:
      self.warnings.append(f'{len(ema)} EMA tensor(s) (model_ema.*) ignored: the converted weights '
                           'are the training weights (GCD trains without EMA, docs/weights.md §2c)')
    self.ignored = self._drop(sgm_keys.CKPT_IGNORED) + ema + self._drop(sgm_keys.SGM_IGNORED)

  def read(self, key):
    return _torch_to_numpy(self._sd[key])

  def close(self):
    self._sd = None


class DiffusersSource(Source):
  """A diffusers pipeline folder: `unet/`, `vae/`, `image_encoder/` (+ GCD's `camera_embedder/`).

  Keys are `<subfolder>/<key>`; a subfolder the model does not need may be absent.
  """
  kind = 'diffusers'
  FOLDERS = ('unet', 'vae', 'image_encoder', 'camera_embedder')
  # Buffers some writers store beside the parameters.
  IGNORED = ('image_encoder/vision_model.embeddings.position_ids',)

  def __init__(self, path, folders: Iterable[str] = FOLDERS):
    super().__init__()
    from gcd_jax.convert.diffusers import find_weights_file  # pylint: disable=g-import-not-at-top
    self.path = os.fspath(path)
    if not os.path.isdir(self.path):
      raise WeightFileError(f'{self.path}: no such folder (expected a diffusers pipeline folder with '
                            'unet/, vae/, image_encoder/)')
    self._files: list[SafetensorsFile] = []
    self._owner: dict[str, SafetensorsFile] = {}
    found = False
    for folder in folders:
      sub = os.path.join(self.path, folder)
      if not os.path.isdir(sub):
        continue
      found = True
      try:
        weights = find_weights_file(sub)
      except FileNotFoundError as e:
        raise WeightFileError(str(e)) from e
      files = [weights]
      if weights.endswith('.index.json'):
        with open(weights) as f:
          files = [os.path.join(sub, s) for s in sorted(set(json.load(f)['weight_map'].values()))]
      for p in files:
        st = SafetensorsFile(p)
        self._files.append(st)
        for k in st.keys():
          self.shapes[f'{folder}/{k}'] = st.shapes[k]
          self.dtypes[f'{folder}/{k}'] = st.dtypes[k]
          self._owner[f'{folder}/{k}'] = st
    if not found:
      raise WeightFileError(f'{self.path}: none of {", ".join(self.FOLDERS)} found; point at a '
                            'diffusers pipeline folder')
    self.ignored = self._drop(self.IGNORED)

  def read(self, key):
    folder, _, k = key.partition('/')
    return self._owner[key].read(k)

  def close(self):
    for f in self._files:
      f.close()


def sniff_format(path) -> str:
  """What a weight file is by its first bytes: 'folder', 'safetensors' (u64 header length, then '{'),
  'torch-zip' (torch.save's zip), 'pickle' (legacy torch.save) or 'unknown'."""
  path = os.fspath(path)
  if os.path.isdir(path):
    return 'folder'
  try:
    with open(path, 'rb') as f:
      head = f.read(9)
  except OSError:
    return 'unknown'
  if head[:4] == b'PK\x03\x04':
    return 'torch-zip'
  if len(head) == 9 and head[8:9] == b'{' and 0 < struct.unpack('<Q', head[:8])[0] < 1 << 30:
    return 'safetensors'
  if head[:1] == b'\x80':
    return 'pickle'
  return 'unknown'


class WrongFormatError(WeightFileError):
  """The file is of another kind than --from says (a usage error)."""


# The --from value that fits each sniffed kind (for the error message).
_FITS = {'safetensors': 'sgm', 'torch-zip': 'gcd-ckpt', 'pickle': 'gcd-ckpt', 'folder': 'diffusers'}


def open_source(kind: str, path) -> Source:
  found = sniff_format(path) if os.path.exists(os.fspath(path)) else 'missing'
  fits = _FITS.get(found)
  if fits is not None and fits != kind:
    raise WrongFormatError(f'{os.fspath(path)} is a {found} {"" if found == "folder" else "file"} but --from {kind} '
                          f'was given; use --from {fits}')
  if kind == 'sgm':
    return SgmSource(path)
  if kind == 'gcd-ckpt':
    return CkptSource(path)
  if kind == 'diffusers':
    return DiffusersSource(path)
  raise ValueError(f'unknown source format {kind!r}; use sgm, diffusers or gcd-ckpt')


def warn(msg: str):
  warnings.warn(msg, stacklevel=2)
