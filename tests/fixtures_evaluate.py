"""Fixtures of the evaluation tests: a tiny test split (TFDS) and a tiny random-weight model checkpoint."""

from __future__ import annotations

import os

import numpy as np
import pytest

TEST_SCENES = ('scn02900', 'scn02901')  # procedural scenes at Kubric test-split indices
HW = (16, 24)               # model resolution of the tests (tiny model: VAE ×2, U-Net ×2 → multiple of 4)
RENDER_HW = (28, 42)
NUM_FRAMES = 4
# procedural 'tiny' scenes, shortened (8 frames) and smaller (32×48) to keep the fixture fast
SCENE_PRESET = 'tiny,num_frames=8,height=32,width=48'


@pytest.fixture(scope='session')
def eval_tfds(tmp_path_factory):
  """TFDS data dir with a 2-scene test split of procedural scenes (geometry.procedural, SCENE_PRESET:
  32×48, 8 frames, 16 views in Kubric-4D's layout) written at the Kubric test indices 2900/2901 and
  built by the kubric_4d builder (the procedural_4d builder's own test split would need ≥ 60 scenes
  for 2 test scenes: 1/30 of the scenes)."""
  from data_pipelines import tfds_builders  # pylint: disable=g-import-not-at-top
  root = str(tmp_path_factory.mktemp('eval_scenes'))
  tfds_builders.generate_scenes(root, [2900, 2901], preset=SCENE_PRESET, seed=0)
  data_dir = str(tmp_path_factory.mktemp('eval_tfds'))
  tfds_builders.build('kubric_4d', data_dir=data_dir, config='tiny', manual_dir=root)
  return data_dir


def data_preset(data_dir: str) -> str:
  """--data string for `gcd-jax evaluate` on eval_tfds."""
  return (f'tiny,dataset=kubric_4d,builder_config=tiny,data_dir={data_dir},height={HW[0]},width={HW[1]},'
          f'render_height={RENDER_HW[0]},render_width={RENDER_HW[1]},num_frames={NUM_FRAMES}')


@pytest.fixture(scope='session')
def tiny_checkpoint(tmp_path_factory):
  """A gcd-jax model checkpoint of the `tiny` preset with seeded random weights."""
  from gcd_jax.models import presets as models  # pylint: disable=g-import-not-at-top
  from tests import fixtures_models  # pylint: disable=g-import-not-at-top
  out = os.path.join(str(tmp_path_factory.mktemp('ckpt')), 'tiny')
  return fixtures_models.write_random_checkpoint(out, models.get_config('tiny'), seed=0)


def write_test_video(path: str, num_frames: int = 12, hw=(40, 56)) -> str:
  """A small moving-gradient mp4 (imageio)."""
  import imageio.v2 as imageio  # pylint: disable=g-import-not-at-top
  h, w = hw
  yy, xx = np.mgrid[0:h, 0:w]
  frames = [np.stack([(xx * 4 + 9 * t) % 256, (yy * 5) % 256, np.full_like(xx, 40 * t % 256)], -1).astype(np.uint8)
            for t in range(num_frames)]
  imageio.mimwrite(path, frames, format='FFMPEG', fps=8, macro_block_size=8)
  return path
