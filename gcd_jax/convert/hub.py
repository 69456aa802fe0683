"""Weights from the Hugging Face Hub, as diffusers and MaxDiffusion users expect (`huggingface_hub`: its cache,
revisions, offline mode).

  gcd-jax convert --from diffusers stabilityai/stable-video-diffusion-img2vid --config svd --out ckpt/svd
  gcd-jax convert --from sgm stabilityai/stable-video-diffusion-img2vid/svd.safetensors --config svd ...
  gcd-jax convert --from gcd-ckpt ORG/REPO/path/to/gcd_kubric.ckpt --revision main ...

A source that exists on disk is used as is. Otherwise `ORG/REPO` (diffusers: the pipeline's weight folders)
or `ORG/REPO/PATH/IN/REPO` (sgm, gcd-ckpt: one file) is fetched into the Hub cache (HF_HOME / HF_HUB_CACHE),
or found there with HF_HUB_OFFLINE=1. Gated repositories (SVD is) need `huggingface-cli login` or HF_TOKEN.
"""

from __future__ import annotations

import os
import re

from gcd_jax.convert.sources import WeightFileError

_REPO = re.compile(r'^[A-Za-z0-9][\w.-]*/[\w.-]+$')
# diffusers: what the converter reads (the pipeline's other folders, e.g. scheduler/, are not needed).
DIFFUSERS_PATTERNS = ('model_index.json', 'unet/*', 'vae/*', 'image_encoder/*', 'camera_embedder/*')


def is_hub_reference(src: str, fmt: str) -> bool:
  """True when src names a Hub repo (diffusers) or a file in one (sgm / gcd-ckpt) and is not a local path."""
  src = os.fspath(src)
  if os.path.exists(src) or src.startswith(('.', '/', '~')):
    return False
  if fmt == 'diffusers':
    return bool(_REPO.match(src))
  parts = src.split('/')
  return len(parts) >= 3 and bool(_REPO.match('/'.join(parts[:2])))


def resolve_model_folder(src: str, *, revision: str | None = None) -> str:
  """A gcd-jax model folder (`gcd-jax convert` output, with metadata.json) on disk, or `ORG/REPO[/SUBFOLDER]`
  on the Hub → a local folder (the Hub snapshot in its cache)."""
  src = os.fspath(src)
  parts = src.split('/')
  if os.path.exists(src) or src.startswith(('.', '/', '~')) or len(parts) < 2 or not _REPO.match('/'.join(parts[:2])):
    return src
  sub = '/'.join(parts[2:])
  folder = resolve('/'.join(parts[:2]), 'diffusers', revision=revision, patterns=(f'{sub}/*' if sub else '*',))
  return os.path.join(folder, sub) if sub else folder


def resolve(src: str, fmt: str, *, revision: str | None = None, patterns=DIFFUSERS_PATTERNS) -> str:
  """A local path for `src`: itself when it exists, else the Hub download / cache entry."""
  src = os.fspath(src)
  if not is_hub_reference(src, fmt):
    return src
  try:
    import huggingface_hub  # pylint: disable=g-import-not-at-top
    from huggingface_hub import errors  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise WeightFileError(f'{src} is not a local path and huggingface_hub is not installed to fetch it') from e
  try:
    if fmt == 'diffusers':
      return huggingface_hub.snapshot_download(src, revision=revision, allow_patterns=list(patterns))
    repo, filename = '/'.join(src.split('/')[:2]), '/'.join(src.split('/')[2:])
    return huggingface_hub.hf_hub_download(repo, filename, revision=revision)
  except errors.LocalEntryNotFoundError as e:
    raise WeightFileError(f'{src}: not in the Hub cache and the Hub cannot be reached (offline: HF_HUB_OFFLINE='
                          f'{os.environ.get("HF_HUB_OFFLINE", "0")}); download it once online, or pass a local '
                          'path') from e
  except errors.GatedRepoError as e:
    raise WeightFileError(f'{src}: the repository is gated; accept its licence on huggingface.co and log in '
                          '(`huggingface-cli login` or HF_TOKEN)') from e
  except (errors.RepositoryNotFoundError, errors.RevisionNotFoundError, errors.EntryNotFoundError) as e:
    raise WeightFileError(f'{src}: {type(e).__name__} on the Hub (check the repo id, the file path and '
                          f'--revision {revision or "main"})') from e
  except errors.HfHubHTTPError as e:
    raise WeightFileError(f'{src}: Hub request failed ({str(e).splitlines()[0]})') from e
