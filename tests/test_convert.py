"""Weight conversion: sgm / diffusers / GCD .ckpt → Orbax → sgm / diffusers (tiny random models, CPU).

Reference models are PyTorch (diffusers UNetSpatioTemporalConditionModel + a GCD aux MLP and
SphericalEmbedder Linear, AutoencoderKLTemporalDecoder, transformers CLIPVisionModelWithProjection) with
EVERY parameter randomised. Their state dicts are renamed to sgm keys (docs/weights.md §3-§4) and
written in each input format with the formats' own writers (safetensors.numpy.save_file, torch.save,
save_pretrained); we convert through the CLI functions, run the Flax modules and compare with PyTorch.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from gcd_jax.models import presets as models
from gcd_jax.commands import export as export_cmd
from gcd_jax.convert import checkpoint_io, sgm_keys, sources
from gcd_jax.convert import convert as conv
from gcd_jax.convert.torch_layout import WeightLoadError, torch_state_dict
from tests.fixtures_unet import diffusers_unet, numpy_state, randomise_

CFG = 'tiny,eps=diffusers'  # diffusers' ResBlock GroupNorm eps layout, for parity with its U-Net
B, T, H, W = 1, 3, 8, 8
TOL = 1e-4
CAMERA_KEYS = ['camera_embedder.proj.bias', 'camera_embedder.proj.weight',
               'unet.aux_label_emb.linear_1.bias', 'unet.aux_label_emb.linear_1.weight',
               'unet.aux_label_emb.linear_2.bias', 'unet.aux_label_emb.linear_2.weight']
# Keys a real svd.safetensors holds that the model does not use (dropped on import by design).
SGM_EXTRAS = {
    'conditioner.embedders.3.encoder.decoder.conv_in.weight': (64, 4, 3, 3),
    'conditioner.embedders.3.encoder.post_quant_conv.weight': (4, 4, 1, 1),
    'conditioner.embedders.0.open_clip.model.ln_final.weight': (32,),
    'conditioner.embedders.0.open_clip.model.logit_scale': (),
}


# ---------------------------------------------------------------------------------------------------
# Reference models and files


def _torch_vae(cfg):
  from diffusers import AutoencoderKLTemporalDecoder  # pylint: disable=g-import-not-at-top
  v = cfg.vae
  return AutoencoderKLTemporalDecoder(
      in_channels=v.in_channels, out_channels=v.out_channels,
      down_block_types=('DownEncoderBlock2D',) * len(v.block_out_channels),
      block_out_channels=tuple(v.block_out_channels), layers_per_block=v.layers_per_block,
      latent_channels=v.latent_channels)


def _torch_clip(cfg):
  from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection  # pylint: disable=g-import-not-at-top
  c = cfg.clip
  return CLIPVisionModelWithProjection(CLIPVisionConfig(
      hidden_size=c.hidden_size, intermediate_size=c.intermediate_size, projection_dim=c.projection_dim,
      num_hidden_layers=c.num_layers, num_attention_heads=c.num_heads, image_size=c.image_size,
      patch_size=c.patch_size, hidden_act='gelu', layer_norm_eps=c.layer_norm_eps))


def _to_sgm(ours: dict[str, dict[str, np.ndarray]], cfg) -> dict[str, np.ndarray]:
  maps = sgm_keys.sgm_tensor_maps({c: list(v) for c, v in ours.items()},
                                  sgm_keys.UNetLayout.from_config(cfg.unet),
                                  len(cfg.vae.block_out_channels))
  out = {}
  for m in maps:
    for k, a in zip(m.sgm, m.transform.to_sgm([ours[m.component][o] for o in m.ours])):
      out[k] = np.ascontiguousarray(a)
  for dup, src in sgm_keys.sgm_duplicates(maps).items():
    out[dup] = out[src].copy()
  return out


@pytest.fixture(scope='module')
def ref(tmp_path_factory):
  from diffusers.models.embeddings import TimestepEmbedding  # pylint: disable=g-import-not-at-top
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  cfg = models.get_config(CFG)
  u = cfg.unet
  tm = diffusers_unet(cfg, seed=0)
  aux = randomise_(TimestepEmbedding(u.aux_emb_dim, 4 * u.model_channels), 1).eval()
  cam = randomise_(torch.nn.Linear(13, cfg.camera.embed_dim), 2).eval()
  vae = randomise_(_torch_vae(cfg), 3).eval()
  clip = randomise_(_torch_clip(cfg), 4).eval()
  ours = {
      'network': {**numpy_state(tm, 'unet.'), **numpy_state(aux, 'unet.aux_label_emb.'),
                  **numpy_state(cam, 'camera_embedder.proj.')},
      'vae': numpy_state(vae),
      'clip': {k: v for k, v in numpy_state(clip).items() if 'position_ids' not in k},
  }
  sgm = _to_sgm(ours, cfg)
  rng = np.random.default_rng(0)
  extras = {k: rng.standard_normal(s).astype(np.float32) for k, s in SGM_EXTRAS.items()}
  d = tmp_path_factory.mktemp('convert_ref')
  files = dict(sgm=str(d / 'gcd.safetensors'), svd=str(d / 'svd.safetensors'),
               ckpt=str(d / 'gcd.ckpt'), diffusers=str(d / 'diffusers'))
  save_file({**sgm, **extras}, files['sgm'])
  no_camera = {k: v for k, v in sgm.items() if not k.startswith(
      (sgm_keys.UNET_PREFIX + 'aux_label_emb.', sgm_keys.CAMERA_PREFIX))}
  save_file({**no_camera, **extras}, files['svd'])
  # A GCD Lightning checkpoint: state_dict (+ LPIPS net), optimizer state, loop counters.
  state_dict = {k: torch.from_numpy(v.copy()) for k, v in sgm.items()}
  state_dict['lpips.net.slice1.0.weight'] = torch.randn(4, 3, 3, 3)
  state_dict['lpips.lin0.model.1.weight'] = torch.randn(1, 4, 1, 1)
  torch.save({'state_dict': state_dict, 'epoch': 3, 'global_step': 1234,
              'pytorch-lightning_version': '1.9.0',
              'optimizer_states': [{'state': {0: {'step': torch.tensor(5.0),
                                                  'exp_avg': torch.randn(7)}},
                                    'param_groups': [{'lr': 2e-5, 'params': [0]}]}],
              'lr_schedulers': [], 'callbacks': {}}, files['ckpt'])
  # A diffusers pipeline folder, written by the libraries themselves (+ GCD's camera parts).
  dd = d / 'diffusers'
  tm.save_pretrained(dd / 'unet')
  unet_file = dd / 'unet' / 'diffusion_pytorch_model.safetensors'
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  save_file({**load_file(str(unet_file)), **numpy_state(aux, 'aux_label_emb.')}, str(unet_file))
  vae.save_pretrained(dd / 'vae')
  clip.save_pretrained(dd / 'image_encoder')
  os.makedirs(dd / 'camera_embedder')
  save_file(numpy_state(cam, 'proj.'), str(dd / 'camera_embedder' / 'diffusion_pytorch_model.safetensors'))
  return dict(cfg=cfg, tm=tm, aux=aux, cam=cam, vae=vae, clip=clip, ours=ours, sgm=sgm, files=files,
              dir=d)


def _cli_convert(fmt, src, out, *extra, config=CFG):
  from gcd_jax import cli  # pylint: disable=g-import-not-at-top
  return cli.main(['convert', str(src), '--from', fmt, '--config', config, '--out', str(out), '--no-progress',
                   *extra])


@pytest.fixture(scope='module')
def converted(ref, tmp_path_factory):
  """Each input format converted once through the CLI: {fmt: checkpoint dir}."""
  d = tmp_path_factory.mktemp('converted')
  out = {}
  for fmt, key in (('sgm', 'sgm'), ('gcd-ckpt', 'ckpt'), ('diffusers', 'diffusers')):
    out[fmt] = str(d / fmt)
    assert _cli_convert(fmt, ref['files'][key], out[fmt]) == 0
  return out


def _restore(ckpt):
  return checkpoint_io.restore_model_checkpoint(ckpt)


@pytest.fixture(scope='module')
def restored(converted):
  """{fmt: (network, vae, clip)} restored once."""
  return {fmt: _restore(d) for fmt, d in converted.items()}


# ---------------------------------------------------------------------------------------------------
# Key mapping (no weights)


def test_full_size_sgm_key_mapping():
  """SVD's real U-Net / VAE / CLIP names and counts (docs/weights.md §3, §4) from meta torch models."""
  from diffusers import UNetSpatioTemporalConditionModel  # pylint: disable=g-import-not-at-top
  cfg = models.get_config('gcd')
  with torch.device('meta'):
    unet = UNetSpatioTemporalConditionModel()
    vae, clip = _torch_vae(cfg), _torch_clip(cfg)
  unet_keys = {'unet.' + k: tuple(v.shape) for k, v in unet.state_dict().items()}
  ours = {'network': unet_keys, 'vae': {k: tuple(v.shape) for k, v in vae.state_dict().items()},
          'clip': {k: tuple(v.shape) for k, v in clip.state_dict().items() if 'position_ids' not in k}}
  layout = sgm_keys.UNetLayout.from_config(cfg.unet)
  maps = sgm_keys.sgm_tensor_maps({c: list(v) for c, v in ours.items()}, layout, 4)
  shapes = {}
  for m in maps:
    for k, s in zip(m.sgm, m.transform.sgm_shapes([ours[m.component][o] for o in m.ours])):
      shapes[k] = s
  u = {k: s for k, s in shapes.items() if k.startswith(sgm_keys.UNET_PREFIX)}
  assert len(u) == 1428
  by_ndim = {n: sum(len(s) == n for s in u.values()) for n in (1, 2, 4, 5)}
  assert by_ndim == {1: 854, 2: 464, 4: 66, 5: 44}
  assert sum(int(np.prod(s)) for s in u.values()) == 1_524_623_082
  p = sgm_keys.UNET_PREFIX
  for key, shape in {
      p + 'input_blocks.0.0.weight': (320, 8, 3, 3),
      p + 'input_blocks.3.0.op.weight': (320, 320, 3, 3),
      p + 'input_blocks.4.0.skip_connection.weight': (640, 320, 1, 1),
      p + 'input_blocks.1.0.time_stack.in_layers.2.weight': (320, 320, 3, 1, 1),
      p + 'input_blocks.1.1.time_stack.0.ff_in.net.0.proj.weight': (2560, 320),
      p + 'input_blocks.1.1.time_pos_embed.0.weight': (1280, 320),
      p + 'middle_block.1.time_mixer.mix_factor': (1,),
      p + 'output_blocks.2.1.conv.weight': (1280, 1280, 3, 3),
      p + 'output_blocks.5.2.conv.weight': (1280, 1280, 3, 3),
      p + 'output_blocks.8.2.conv.weight': (640, 640, 3, 3),
      p + 'label_emb.0.0.weight': (1280, 768),
      p + 'out.2.weight': (4, 320, 3, 3),
      'conditioner.embedders.3.encoder.quant_conv.weight': (8, 8, 1, 1),
      'conditioner.embedders.3.encoder.encoder.down.0.downsample.conv.weight': (128, 128, 3, 3),
      'conditioner.embedders.3.encoder.encoder.mid.attn_1.q.weight': (512, 512, 1, 1),
      'first_stage_model.decoder.up.3.block.0.mix_factor': (1,),
      'first_stage_model.decoder.up.3.block.0.time_stack.in_layers.2.weight': (512, 512, 3, 1, 1),
      'first_stage_model.decoder.up.1.block.0.nin_shortcut.weight': (256, 512, 1, 1),
      'first_stage_model.decoder.conv_out.time_mix_conv.weight': (3, 3, 3, 1, 1),
      sgm_keys.CLIP_PREFIX + 'proj': (1280, 1024),
      sgm_keys.CLIP_PREFIX + 'positional_embedding': (257, 1280),
      sgm_keys.CLIP_PREFIX + 'transformer.resblocks.31.attn.in_proj_weight': (3840, 1280),
  }.items():
    assert shapes[key] == shape, key
  # The string mappings invert each other on every key.
  for k in unet_keys:
    assert sgm_keys.network_key_from_sgm(sgm_keys.network_key_to_sgm(k, layout), layout) == k
  for k in ours['vae']:
    assert sgm_keys.vae_key_from_sgm(sgm_keys.vae_key_to_sgm(k, 4)[0], 4) == k
  for k in ours['clip']:
    assert k in sgm_keys.clip_keys_from_sgm(sgm_keys.clip_key_to_sgm(k)[0])
  assert sgm_keys.network_key_from_sgm(p + 'input_blocks.12.0.op.weight', layout) is None


def test_transforms_are_exact_inverses():
  rng = np.random.default_rng(0)
  for t, shape in ((sgm_keys.SQUEEZE_1X1, (6, 6, 1, 1)), (sgm_keys.TRANSPOSE, (5, 3)),
                   (sgm_keys.SPLIT_QKV, (12, 4)), (sgm_keys.SPLIT_QKV, (12,))):
    a = rng.standard_normal(shape).astype(np.float32)
    ours = t.to_ours([a])
    back = t.to_sgm(ours)
    assert len(back) == 1 and back[0].shape == a.shape and np.array_equal(back[0], a)
    assert [tuple(s) for s in t.sgm_shapes([o.shape for o in ours])] == [shape]


# ---------------------------------------------------------------------------------------------------
# Parity of the converted models with PyTorch


def _torch_unet_per_row(tm, aux, x, t, ctx, y, adm):
  """diffusers' forward on B·T rows (sgm interface); GCD adds aux_label_emb(y[:, adm:])."""
  emb = tm.time_embedding(tm.time_proj(t)) + tm.add_embedding(y[:, :adm]) + aux(y[:, adm:])
  ioi = torch.zeros(x.shape[0] // T, T)
  h = tm.conv_in(x)
  res = (h,)
  for blk in tm.down_blocks:
    kw = dict(encoder_hidden_states=ctx) if getattr(blk, 'has_cross_attention', False) else {}
    h, r = blk(hidden_states=h, temb=emb, image_only_indicator=ioi, **kw)
    res += r
  h = tm.mid_block(hidden_states=h, temb=emb, encoder_hidden_states=ctx, image_only_indicator=ioi)
  for blk in tm.up_blocks:
    r, res = res[-len(blk.resnets):], res[:-len(blk.resnets)]
    kw = dict(encoder_hidden_states=ctx) if getattr(blk, 'has_cross_attention', False) else {}
    h = blk(hidden_states=h, temb=emb, res_hidden_states_tuple=r, image_only_indicator=ioi, **kw)
  return tm.conv_out(tm.conv_act(tm.conv_norm_out(h)))


# Jitted so that the three formats (same graph) compile once.
@nnx.jit(static_argnames=('num_frames',))
def _unet(net, x, t, ctx, y, *, num_frames):
  return net.unet(x, t, ctx, y, num_frames=num_frames)


@nnx.jit
def _camera(net, angles):
  return net.embed_camera(angles)


@nnx.jit
def _encode(vae, img):
  return vae.encode(img)


@nnx.jit(static_argnames=('num_frames',))
def _decode(vae, z, *, num_frames):
  return vae.decode(z, num_frames=num_frames)


@nnx.jit
def _clip(clip, pix):
  return clip(pix)


@pytest.fixture(scope='module')
def torch_outputs(ref):
  """Inputs and PyTorch outputs, computed once."""
  from gcd_jax.models.camera import spherical_features  # pylint: disable=g-import-not-at-top
  cfg = ref['cfg']
  u = cfg.unet
  rng = np.random.default_rng(1)
  n = B * T
  f = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
  angles = np.stack([rng.uniform(-3, 3, n), rng.uniform(-1, 1, n), rng.uniform(-2, 2, n)], 1)
  feats = np.array(spherical_features(jnp.asarray(angles, jnp.float32)))
  x, t, ctx, vec = f(n, 8, H, W), f(n), f(n, 3, u.context_dim), f(n, u.adm_in_channels)
  img = np.tanh(f(n, 3, 16, 16))
  z = f(n, 4, 4, 4)
  pix = f(2, 3, cfg.clip.image_size, cfg.clip.image_size)
  with torch.no_grad():
    cam = ref['cam'](torch.from_numpy(feats)).numpy()
    y = np.concatenate([vec, cam], 1)
    unet = _torch_unet_per_row(ref['tm'], ref['aux'], *map(torch.from_numpy, (x, t, ctx, y)),
                               adm=u.adm_in_channels).numpy()
    dist = ref['vae'].encode(torch.from_numpy(img)).latent_dist
    dec = ref['vae'].decode(torch.from_numpy(z), num_frames=T).sample.numpy()
    emb = ref['clip'](pixel_values=torch.from_numpy(pix)).image_embeds.numpy()
  return dict(angles=angles, cam=cam, x=x, t=t, ctx=ctx, y=y, unet=unet, img=img,
              mean=dist.mean.numpy(), logvar=dist.logvar.numpy(), z=z, dec=dec, pix=pix, emb=emb)


def _nhwc(a):
  return jnp.asarray(np.asarray(a).transpose(0, 2, 3, 1))


def _nchw(a):
  return np.asarray(a).transpose(0, 3, 1, 2)


@pytest.mark.parametrize('fmt', ['sgm', 'gcd-ckpt', 'diffusers'])
def test_converted_models_match_pytorch(restored, torch_outputs, fmt):
  o = torch_outputs
  net, vae, clip = restored[fmt]
  diffs = {}
  diffs['camera'] = np.abs(np.asarray(_camera(net, jnp.asarray(o['angles'], jnp.float32)))
                           - o['cam']).max()
  got = _unet(net, _nhwc(o['x']), jnp.asarray(o['t']), jnp.asarray(o['ctx']), jnp.asarray(o['y']),
              num_frames=T)
  diffs['unet'] = np.abs(_nchw(got) - o['unet']).max()
  mean, logvar = _encode(vae, _nhwc(o['img']))
  diffs['vae_mean'] = np.abs(_nchw(mean) - o['mean']).max()
  diffs['vae_logvar'] = np.abs(_nchw(logvar) - o['logvar']).max()
  diffs['vae_decode'] = np.abs(_nchw(_decode(vae, _nhwc(o['z']), num_frames=T)) - o['dec']).max()
  diffs['clip'] = np.abs(np.asarray(_clip(clip, _nhwc(o['pix']))) - o['emb']).max()
  print(f'{fmt}: max abs diff vs PyTorch ' + ', '.join(f'{k} {v:.2e}' for k, v in diffs.items()) +
        f' (output std: unet {o["unet"].std():.2f}, decode {o["dec"].std():.2f}, '
        f'clip {o["emb"].std():.2f})')
  assert all(v <= TOL for v in diffs.values()), diffs
  assert min(o['unet'].std(), o['dec'].std(), o['emb'].std()) > 0.05


def test_formats_give_identical_parameters(ref, converted, restored):
  """All three input formats hold the same tensors → bit-identical converted parameters."""
  states = {fmt: [torch_state_dict(m) for m in mods] for fmt, mods in restored.items()}
  for comp, (sgm_sd, ckpt_sd, dif_sd) in zip(
      checkpoint_io.COMPONENTS, zip(states['sgm'], states['gcd-ckpt'], states['diffusers'])):
    assert sgm_sd.keys() == ckpt_sd.keys() == dif_sd.keys() == ref['ours'][comp].keys()
    for k, v in ref['ours'][comp].items():
      assert np.array_equal(sgm_sd[k], v) and np.array_equal(ckpt_sd[k], v) and np.array_equal(
          dif_sd[k], v), f'{comp}:{k}'
  meta = checkpoint_io.read_metadata(converted['sgm'])
  assert meta['source']['format'] == 'sgm' and meta['dtype'] == 'float32'
  assert meta['model_config']['unet']['aux_emb_dim'] == 8
  assert meta['tensor_counts']['network'] == len(ref['ours']['network'])


# ---------------------------------------------------------------------------------------------------
# Export


def test_sgm_round_trip_is_bit_exact(ref, converted, tmp_path):
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  out = tmp_path / 'back.safetensors'
  parser = __import__('argparse').ArgumentParser()
  export_cmd.add_arguments(parser)
  assert export_cmd.run(parser.parse_args([converted['sgm'], '--to', 'sgm', '--out', str(out),
                                           '--no-progress'])) == 0
  back = load_file(str(out))
  # Every tensor the model holds (both encoder copies included) comes back bit for bit; the unused
  # extras (2-D decoder of embedders.3, text-tower leftovers) are documented as dropped.
  assert sorted(back) == sorted(ref['sgm'])
  for k, v in ref['sgm'].items():
    assert back[k].dtype == v.dtype and back[k].shape == v.shape and np.array_equal(back[k], v), k
  assert any(k.startswith('first_stage_model.encoder.') for k in back)


def test_diffusers_export_loads_in_diffusers_and_transformers(ref, converted, tmp_path):
  from diffusers import AutoencoderKLTemporalDecoder  # pylint: disable=g-import-not-at-top
  from transformers import CLIPVisionModelWithProjection  # pylint: disable=g-import-not-at-top
  out = tmp_path / 'pipe'
  parser = __import__('argparse').ArgumentParser()
  export_cmd.add_arguments(parser)
  assert export_cmd.run(parser.parse_args([converted['sgm'], '--to', 'diffusers', '--out', str(out),
                                           '--no-progress'])) == 0
  assert sorted(os.listdir(out)) == ['camera_embedder', 'image_encoder', 'unet', 'vae']
  vae = AutoencoderKLTemporalDecoder.from_pretrained(out / 'vae')
  for k, v in ref['vae'].state_dict().items():
    assert torch.equal(vae.state_dict()[k], v), k
  clip = CLIPVisionModelWithProjection.from_pretrained(out / 'image_encoder')
  for k, v in ref['clip'].state_dict().items():
    assert torch.equal(clip.state_dict()[k], v), k
  from diffusers import UNetSpatioTemporalConditionModel  # pylint: disable=g-import-not-at-top
  unet = UNetSpatioTemporalConditionModel.from_pretrained(out / 'unet')  # aux_label_emb.* ignored
  for k, v in ref['tm'].state_dict().items():
    assert torch.equal(unet.state_dict()[k], v), k
  # GCD's parts: the camera MLP stays in the U-Net file, the embedder gets its own folder.
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  unet_file = load_file(str(out / 'unet' / 'diffusion_pytorch_model.safetensors'))
  cam_file = load_file(str(out / 'camera_embedder' / 'diffusion_pytorch_model.safetensors'))
  for k, v in ref['ours']['network'].items():
    got = unet_file[k[len('unet.'):]] if k.startswith('unet.') else cam_file[
        k[len('camera_embedder.'):]]
    assert np.array_equal(got, v), k


# ---------------------------------------------------------------------------------------------------
# Bad inputs: clear message naming the problem, nothing left behind


def _fails(capsys, fmt, src, out, *extra, config=CFG) -> str:
  assert _cli_convert(fmt, src, out, *extra, config=config) == 1
  err = capsys.readouterr().err
  assert not os.path.exists(out)
  assert not [p for p in os.listdir(os.path.dirname(out)) if p.endswith('.partial')]
  return err


class _Payload:
  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):  # runs os.mkdir(marker) if anybody unpickles it unsafely
    return (os.mkdir, (self.marker,))


def test_malicious_pickle_is_refused_without_running(tmp_path, capsys):
  marker = str(tmp_path / 'PWNED')
  bad = tmp_path / 'evil.ckpt'
  torch.save({'state_dict': {'model.diffusion_model.out.2.bias': torch.zeros(4)},
              'payload': _Payload(marker)}, bad)
  err = _fails(capsys, 'gcd-ckpt', str(bad), str(tmp_path / 'out'))
  assert 'refusing to load' in err and 'NOT loaded' in err
  assert not os.path.exists(marker)
  # A plain (non-zip) pickle with the same payload is refused too.
  bad2 = tmp_path / 'evil2.ckpt'
  with open(bad2, 'wb') as f:
    pickle.dump(_Payload(marker), f)
  with pytest.raises(sources.WeightFileError):
    sources.open_lightning_checkpoint(bad2)
  assert not os.path.exists(marker)


def test_truncated_safetensors(ref, tmp_path, capsys):
  src = tmp_path / 'cut.safetensors'
  with open(ref['files']['sgm'], 'rb') as f:
    data = f.read()
  src.write_bytes(data[:len(data) * 2 // 3])
  err = _fails(capsys, 'sgm', str(src), str(tmp_path / 'out'))
  assert 'is truncated' in err and str(src) in err


def test_missing_file(tmp_path, capsys):
  for fmt in ('sgm', 'gcd-ckpt', 'diffusers'):
    err = _fails(capsys, fmt, str(tmp_path / 'nope'), str(tmp_path / 'out'))
    assert 'nope' in err and 'no such' in err


def test_wrong_config_shape_mismatch(ref, tmp_path, capsys):
  cfg_file = tmp_path / 'wide.py'
  cfg_file.write_text('from gcd_jax.models import presets as models\n\ndef get_config(arg):\n'
                      '  cfg = models.get_config("tiny")\n  cfg.name = "wide"\n'
                      '  cfg.unet.model_channels = 64\n  return cfg\n')
  err = _fails(capsys, 'sgm', ref['files']['sgm'], str(tmp_path / 'out'), config=f'{cfg_file}:x')
  assert 'shape mismatch' in err and "looks like preset 'tiny'" in err
  assert 'and 608 more' in err and err.count('\n') == 1  # one line: a few examples, the count of the rest
  # A GCD file into the SVD preset: the camera layers are unexpected.
  err = _fails(capsys, 'sgm', ref['files']['sgm'], str(tmp_path / 'out'), config='tiny_svd')
  assert 'unexpected' in err and 'aux_label_emb.0.' in err and "preset 'tiny'" in err


def test_unknown_keys_are_errors_and_lpips_ema_ignored(ref, tmp_path, capsys):
  sd = {k: torch.from_numpy(v.copy()) for k, v in ref['sgm'].items()}
  sd['lpips.lin0.weight'] = torch.zeros(1)
  sd['model_ema.decay'] = torch.tensor(0.999)
  sd['model.diffusion_model.surprise.weight'] = torch.zeros(2)
  path = tmp_path / 'odd.ckpt'
  torch.save({'state_dict': sd, 'global_step': 1}, path)
  err = _fails(capsys, 'gcd-ckpt', str(path), str(tmp_path / 'out'))
  assert '1 unexpected key(s): model.diffusion_model.surprise.weight' in err
  del sd['model.diffusion_model.surprise.weight']
  torch.save({'state_dict': sd, 'global_step': 1}, path)
  with pytest.warns(UserWarning, match='EMA'):
    s = conv.convert_checkpoint('gcd-ckpt', str(path), CFG, str(tmp_path / 'ok'), progress=False)
  assert s.tensors_ignored == 2 and not s.initialised


def test_init_missing_initialises_only_the_camera_layers(ref, restored, tmp_path, capsys):
  err = _fails(capsys, 'sgm', ref['files']['svd'], str(tmp_path / 'out'))
  assert 'pass --init-missing' in err and 'missing key(s)' in err
  out = tmp_path / 'init'
  s = conv.convert_checkpoint('sgm', ref['files']['svd'], CFG, str(out), init_missing=True,
                              progress=False)
  assert s.initialised == ['network:' + k for k in CAMERA_KEYS]
  assert 'initialised fresh' in s.text()
  fresh = [torch_state_dict(m) for m in _restore(out)]
  full = [torch_state_dict(m) for m in restored['sgm']]
  for comp, a, b in zip(checkpoint_io.COMPONENTS, fresh, full):
    for k in b:
      if comp == 'network' and k in CAMERA_KEYS:
        weight = ref['ours']['network'][k.rsplit('.', 1)[0] + '.weight']
        bound = 1 / np.sqrt(weight.shape[1])  # PyTorch default: U(±1/√fan_in) for weight and bias
        assert np.abs(a[k]).max() <= bound and np.abs(a[k]).max() > 0.5 * bound, k
        assert a[k].std() > 0.3 * bound
      else:
        assert np.array_equal(a[k], b[k]), f'{comp}:{k}'


def test_existing_output_is_not_overwritten(ref, converted, capsys):
  before = sorted(os.listdir(converted['sgm']))
  assert _cli_convert('sgm', ref['files']['sgm'], converted['sgm']) == 1
  assert 'already exists' in capsys.readouterr().err
  assert sorted(os.listdir(converted['sgm'])) == before


# ---------------------------------------------------------------------------------------------------
# Restore onto a mesh


def test_restore_sharded(converted, restored):
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:8]).reshape(8), ('x',))
  abstract = checkpoint_io.abstract_module(checkpoint_io.checkpoint_config(converted['sgm']), 'network')
  params = nnx.state(abstract, nnx.Param)

  def pick(v):
    shape = v.shape
    if len(shape) >= 2 and shape[-1] % 8 == 0:
      return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*([None] * (len(shape) - 1)),
                                                                         'x'))
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  shardings = jax.tree.map(pick, params)
  net, vae, clip = checkpoint_io.restore_model_checkpoint(converted['sgm'], shardings={
      'network': shardings}, components=('network',))
  assert vae is None and clip is None
  plain = restored['sgm'][0]
  got = dict(nnx.to_flat_state(nnx.state(net, nnx.Param)))
  want = dict(nnx.to_flat_state(nnx.state(plain, nnx.Param)))
  n_sharded = 0
  for path, var in got.items():
    arr = var.get_value()
    assert np.array_equal(np.asarray(arr), np.asarray(want[path].get_value()))
    if arr.ndim >= 2 and arr.shape[-1] % 8 == 0:
      assert arr.sharding.spec[-1] == 'x'
      assert len(arr.addressable_shards) == 8 and arr.addressable_shards[0].data.shape[-1] == \
          arr.shape[-1] // 8
      n_sharded += 1
  assert n_sharded > 50
  # A config whose shapes differ is refused with the list of differences.
  wide = models.get_config('tiny')
  wide.unet.model_channels = 64
  with pytest.raises(WeightLoadError, match='shape mismatch'):
    checkpoint_io.restore_model_checkpoint(converted['sgm'], wide, components=('network',))


def test_bfloat16_storage(ref, tmp_path):
  """--dtype bfloat16 stores bf16; restore gives the model's float32 params = bf16-rounded weights."""
  import ml_dtypes  # pylint: disable=g-import-not-at-top
  from safetensors import safe_open  # pylint: disable=g-import-not-at-top
  out = tmp_path / 'bf16'
  assert _cli_convert('sgm', ref['files']['sgm'], out, '--dtype', 'bfloat16') == 0
  net, _, _ = _restore(out)
  sd = torch_state_dict(net)
  for k, v in ref['ours']['network'].items():
    assert sd[k].dtype == np.float32
    assert np.array_equal(sd[k], v.astype(ml_dtypes.bfloat16).astype(np.float32)), k
  exported = tmp_path / 'bf16.safetensors'
  from gcd_jax.convert import export  # pylint: disable=g-import-not-at-top
  export.export_checkpoint(str(out), 'sgm', str(exported), progress=False)
  with safe_open(str(exported), 'pt') as f:
    assert f.get_tensor(sgm_keys.UNET_PREFIX + 'out.2.weight').dtype == torch.bfloat16


def test_save_model_checkpoint_in_parts(ref, restored, tmp_path):
  """save_model_checkpoint (the API training uses) splits components into Orbax parts; exact restore."""
  net, vae, clip = restored['sgm']
  out = tmp_path / 'parts'
  checkpoint_io.save_model_checkpoint(str(out), nnx.state(net, nnx.Param), vae, None, ref['cfg'],
                                      {'step': 7}, part_bytes=256 * 1024)
  index = json.loads((out / 'network' / 'index.json').read_text())
  assert index['parts'] > 5 and len(index['leaves']) == len(ref['ours']['network'])
  meta = checkpoint_io.read_metadata(str(out))
  assert meta['components'] == ['network', 'vae'] and meta['step'] == 7
  net2, vae2, clip2 = checkpoint_io.restore_model_checkpoint(str(out))
  assert clip2 is None
  for a, b in ((net, net2), (vae, vae2)):
    sa, sb = torch_state_dict(a), torch_state_dict(b)
    assert sa.keys() == sb.keys() and all(np.array_equal(sa[k], sb[k]) for k in sa)
  with pytest.raises(checkpoint_io.CheckpointError, match='does not contain `clip`'):
    checkpoint_io.restore_model_checkpoint(str(out), components=('clip',))
  with pytest.raises(checkpoint_io.CheckpointError, match='already exists'):
    checkpoint_io.save_model_checkpoint(str(out), None, vae, None, ref['cfg'])


def test_safetensors_writer_reader_agree_with_library(tmp_path):
  """Our streaming writer / pread reader against the safetensors library, incl. bfloat16."""
  import ml_dtypes  # pylint: disable=g-import-not-at-top
  from safetensors.numpy import load_file, save_file  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  arrays = {'a': rng.standard_normal((3, 5)).astype(np.float32), 'b.c': np.arange(7, dtype=np.int64),
            'e': rng.standard_normal((2, 2)).astype(np.float16), 's': np.array(1.5, np.float32)}
  p = tmp_path / 'x.safetensors'
  sources.write_safetensors(p, [(k, v.shape, v.dtype) for k, v in arrays.items()], arrays.__getitem__)
  back = load_file(str(p))
  assert all(np.array_equal(back[k], v) and back[k].dtype == v.dtype for k, v in arrays.items())
  q = tmp_path / 'y.safetensors'
  save_file(arrays, str(q))
  with sources.SafetensorsFile(q) as f:
    assert all(np.array_equal(f.read(k), v) for k, v in arrays.items())
  bf = rng.standard_normal((4, 3)).astype(ml_dtypes.bfloat16)
  r = tmp_path / 'bf.safetensors'
  sources.write_safetensors(r, [('w', bf.shape, bf.dtype)], lambda k: bf)
  import safetensors.torch  # pylint: disable=g-import-not-at-top
  t = safetensors.torch.load_file(str(r))['w']
  assert t.dtype == torch.bfloat16 and np.array_equal(t.float().numpy(), bf.astype(np.float32))
  with sources.SafetensorsFile(r) as f:
    assert np.array_equal(f.read('w'), bf)


@pytest.mark.parametrize('component', checkpoint_io.COMPONENTS)
def test_fast_abstract_build_equals_rngs_build(component):
  """Abstract modules are built with rngs=None (layers.abstract_module, the fast path used by the trainer and
  checkpoint_io); same graph and shapes as tracing nnx.Rngs(0)."""
  cfg = models.get_config(CFG)
  # One level, one ResBlock per block: every block type of the U-Net at a fraction of the tracing time.
  cfg.unet.channel_mult, cfg.unet.num_res_blocks = (1,), 1
  cls = checkpoint_io.module_class(component)
  fast = checkpoint_io._eval_shape(cfg, component)  # pylint: disable=protected-access
  slow = nnx.eval_shape(lambda: cls(cfg, rngs=nnx.Rngs(0)))
  gf, pf, rf = nnx.split(fast, nnx.Param, ...)
  gs, ps, rs = nnx.split(slow, nnx.Param, ...)
  assert gf == gs
  assert jax.tree.map(lambda a: (a.shape, a.dtype), pf.to_pure_dict()) == jax.tree.map(
      lambda a: (a.shape, a.dtype), ps.to_pure_dict())
  assert not jax.tree.leaves(rf) and not jax.tree.leaves(rs)


# ---------------------------------------------------------------------------------------------------
# Weights from the Hugging Face Hub (no network: a local Hub cache built here, HF_HUB_OFFLINE=1)


def _hub_cache(root, repo: str, files: dict) -> str:
  """A Hub cache entry as huggingface_hub lays it out: models--ORG--NAME/{refs/main, snapshots/<commit>/...}."""
  commit = 'a' * 40
  base = root / 'hub' / ('models--' + repo.replace('/', '--'))
  (base / 'refs').mkdir(parents=True)
  (base / 'refs' / 'main').write_text(commit)
  snap = base / 'snapshots' / commit
  for rel, src in files.items():
    dst = snap / rel
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
  return str(root)


def test_convert_from_a_hub_reference_offline(ref, converted, tmp_path, monkeypatch):
  import glob  # pylint: disable=g-import-not-at-top
  folder = ref['files']['diffusers']
  files = {os.path.relpath(p, folder): p for p in glob.glob(os.path.join(folder, '**', '*'), recursive=True)
           if os.path.isfile(p)}
  home = _hub_cache(tmp_path / 'hf', 'gcd-test/tiny-gcd-diffusers', files)
  _hub_cache(tmp_path / 'hf', 'gcd-test/tiny-gcd-sgm', {'weights/gcd.safetensors': ref['files']['sgm']})
  monkeypatch.setenv('HF_HOME', home)
  monkeypatch.setenv('HF_HUB_CACHE', os.path.join(home, 'hub'))
  monkeypatch.setenv('HF_HUB_OFFLINE', '1')
  import huggingface_hub.constants  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', True)
  monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_CACHE', os.path.join(home, 'hub'))
  assert _cli_convert('diffusers', 'gcd-test/tiny-gcd-diffusers', tmp_path / 'from_hub') == 0
  assert _cli_convert('sgm', 'gcd-test/tiny-gcd-sgm/weights/gcd.safetensors', tmp_path / 'from_hub_sgm') == 0
  for fmt, out in (('diffusers', tmp_path / 'from_hub'), ('sgm', tmp_path / 'from_hub_sgm')):
    for got_m, want_m in zip(_restore(str(out)), _restore(converted[fmt])):
      got = dict(nnx.to_flat_state(nnx.state(got_m, nnx.Param)))
      want = dict(nnx.to_flat_state(nnx.state(want_m, nnx.Param)))
      assert got.keys() == want.keys()
      for k in want:
        np.testing.assert_array_equal(np.asarray(got[k].value), np.asarray(want[k].value), err_msg=f'{fmt} {k}')
  # Not cached and offline: one line that says so, nothing written.
  assert _cli_convert('diffusers', 'gcd-test/not-there', tmp_path / 'nope') == 1
  assert not os.path.exists(tmp_path / 'nope')


def test_pipeline_from_a_hub_model_folder_offline(tmp_path, monkeypatch):
  """GCDPipeline.from_pretrained('ORG/REPO') finds a gcd-jax model folder in the Hub cache (offline)."""
  import glob  # pylint: disable=g-import-not-at-top
  from gcd_jax.pipeline import DEMO_MODEL, GCDPipeline  # pylint: disable=g-import-not-at-top
  files = {os.path.relpath(p, DEMO_MODEL): p for p in glob.glob(os.path.join(DEMO_MODEL, '**', '*'), recursive=True)
           if os.path.isfile(p)}
  home = _hub_cache(tmp_path / 'hf', 'gcd-test/demo-model', files)
  import huggingface_hub.constants  # pylint: disable=g-import-not-at-top
  monkeypatch.setenv('HF_HUB_OFFLINE', '1')
  monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', True)
  monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_CACHE', os.path.join(home, 'hub'))
  pipe = GCDPipeline.from_pretrained('gcd-test/demo-model')
  assert pipe.checkpoint.startswith(home) and pipe.num_frames == 6 and pipe.frame_size == (48, 32)
