"""Model presets build and validate; invalid configs fail with a message that names the problem."""

import re

import pytest

from gcd_jax.models import presets as models
from gcd_jax.models.config import ConfigError, resblock_norm_eps, validate_model_config


@pytest.mark.parametrize('preset', models.PRESETS)
def test_presets_validate(preset):
  cfg = models.get_config(preset)
  validate_model_config(cfg)
  assert cfg.unet.aux_emb_dim == (0 if cfg.camera.embedder == 'none' else cfg.camera.embed_dim)


def test_svd_values_match_reference():
  u = models.get_config('svd').unet
  assert (u.model_channels, tuple(u.channel_mult), u.num_res_blocks) == (320, (1, 2, 4, 4), 2)
  assert (u.context_dim, u.adm_in_channels, u.num_head_channels) == (1024, 768, 64)
  assert models.get_config('gcd').unet.aux_emb_dim == 128


def test_options_parse():
  cfg = models.get_config('gcd,dtype=bfloat16,remat=full,eps=diffusers')
  assert (cfg.dtype, cfg.remat, cfg.unet.resblock_norm_eps) == ('bfloat16', 'full', 'diffusers')


@pytest.mark.parametrize('arg, message', [
    ('nope', 'unknown model preset'),
    ('tiny,foo=1', 'unknown model option'),
    ('tiny,remat=sometimes', 'remat='),
    ('tiny,dtype=int8', 'dtype='),
    ('tiny,eps=huge', 'resblock_norm_eps'),
])
def test_bad_presets_and_options(arg, message):
  with pytest.raises(ValueError, match=message):
    models.get_config(arg)


def test_indivisible_channels_and_unknown_keys():
  cfg = models.get_config('tiny')
  cfg.unet.model_channels = 40  # 40 % 32 groups != 0 and 40 % 16 head channels != 0
  with pytest.raises(ConfigError, match=r'channels 40 not divisible by num_groups=32') as e:
    validate_model_config(cfg)
  assert 'num_head_channels=16' in str(e.value)
  cfg = models.get_config('tiny')
  cfg.unet.unlocked_typo = 1
  with pytest.raises(ConfigError, match=r"unknown key\(s\) \['unlocked_typo'\] in `unet.`"):
    validate_model_config(cfg)
  cfg = models.get_config('tiny')
  cfg.clip.num_heads = 5
  with pytest.raises(ConfigError, match='CLIP hidden_size 32 not divisible by num_heads=5'):
    validate_model_config(cfg)


@pytest.mark.parametrize('key,value,words', [('unet.num_res_blocks', 0, 'unet.num_res_blocks=0 must be an integer'),
                                             ('unet.channel_mult', (), 'unet.channel_mult=() must be a non-empty'),
                                             ('vae.layers_per_block', -1, 'vae.layers_per_block=-1')])
def test_zero_or_empty_block_counts(key, value, words):
  cfg = models.get_config('tiny')
  section, field = key.split('.')
  cfg[section][field] = value
  with pytest.raises(ConfigError, match=re.escape(words)):
    validate_model_config(cfg)


def test_camera_width_consistency():
  cfg = models.get_config('tiny')
  cfg.unet.aux_emb_dim = 3
  with pytest.raises(ConfigError, match='aux_emb_dim=3 must equal the camera embedding width 8'):
    validate_model_config(cfg)


def test_resblock_eps_layouts():
  u = models.get_config('svd').unet
  assert {resblock_norm_eps(u, loc, lvl) for loc, lvl in [('down', 0), ('mid', 0), ('up', 3)]} == {1e-5}
  u.resblock_norm_eps = 'diffusers'
  assert [resblock_norm_eps(u, 'down', i) for i in range(4)] == [1e-6, 1e-6, 1e-6, 1e-5]
  assert resblock_norm_eps(u, 'mid', 0) == 1e-5
  assert [resblock_norm_eps(u, 'up', i) for i in range(4)] == [1e-6] * 4
