r"""Model presets: the networks of SVD / GCD as `ml_collections` configs.

Usage (big_vision style, one string argument selects the preset):

  gcd-jax convert --from sgm svd.safetensors --config configs/models.py:gcd --out ckpt/
  python -c "from gcd_jax.models import presets; print(presets.get_config('tiny'))"

Presets
* `svd`      SVD 14-frame img2vid (docs/reference.md §1.2, docs/weights.md §2–3): U-Net 1,524,623,082 params,
             VAE 97,742,847, CLIP ViT-H/14 image tower. No camera conditioning (= GCD ParallelDomain).
* `gcd`      `svd` + GCD camera conditioning: SphericalEmbedder (13 → 128) and `aux_label_emb`
             (128 → 1280 → 1280) added to the timestep embedding per frame (docs/reference.md §1.5).
* `gcd_pose` `gcd` with the 6-DoF `CameraEmbedder` (flattened 3×4 relative pose → Linear(12, 128)).
* `tiny`     a two-level U-Net / VAE / 2-layer CLIP that compiles and runs on CPU in seconds, with the
             GCD camera path on (every code path of `gcd` is exercised).
* `tiny_svd` `tiny` without the camera path.
* `demo`     the demo model (configs/demo.py): `tiny` with a third U-Net level and attention only at the
             8×12 and 4×6 latent levels (global context where it is cheap: on XLA:CPU the 16×24-level
             attention cost ~45% of a train step), a 16-wide camera embedding. 4.8 M U-Net parameters.

Options after the preset, comma separated: `dtype=bfloat16`, `remat=full|none|dots`,
`attention=auto|xla|flash|cudnn|fused|deferred`, `eps=sgm|diffusers` (U-Net ResBlock GroupNorm eps layout, see `resblock_norm_eps` below).
Example: `configs/models.py:gcd,dtype=bfloat16,remat=full`.
"""

from __future__ import annotations

import ml_collections

PRESETS = ('svd', 'gcd', 'gcd_pose', 'tiny', 'tiny_svd', 'demo')


def unet_svd() -> ml_collections.ConfigDict:
  """VideoUNet hyper-parameters, sgm names (docs/reference.md §1.2)."""
  return ml_collections.ConfigDict(dict(
      in_channels=8,
      out_channels=4,
      model_channels=320,
      channel_mult=(1, 2, 4, 4),
      num_res_blocks=2,
      # Downsample factors that have spatial+temporal transformers (ds 1, 2, 4; not 8). The middle block
      # always has one.
      attention_resolutions=(4, 2, 1),
      num_head_channels=64,
      transformer_depth=1,
      context_dim=1024,
      # `y` = [fps_id | motion_bucket_id | cond_aug] sinusoids of this width each (768 = 3 × 256).
      addition_time_embed_dim=256,
      adm_in_channels=768,
      # GCD: width of the camera embedding appended to `y` (0 = no camera path, as SVD / PD models).
      aux_emb_dim=0,
      num_groups=32,
      # ResBlock GroupNorm eps: 'sgm' = 1e-5 everywhere (the reference GCD/SVD code, our default);
      # 'diffusers' = 1e-6 in down_blocks.0-2 and all up_blocks, 1e-5 in down_blocks.3 and mid_block
      # (docs/weights.md §5). A float sets every ResBlock.
      resblock_norm_eps='sgm',
      transformer_norm_eps=1e-6,  # GroupNorm before proj_in, both implementations.
      out_norm_eps=1e-5,
      layer_norm_eps=1e-5,
      # sgm's init: every residual branch's last layer and conv_out start at zero (`zero_module`), the new
      # camera layers at PyTorch's default. Only training from scratch or grown layers see it (unet.py).
      zero_init=True,
  ))


def camera_gcd() -> ml_collections.ConfigDict:
  """GCD camera embedder (conditioner.embedders.5): 'spherical' | 'pose' | 'none'."""
  return ml_collections.ConfigDict(dict(embedder='spherical', embed_dim=128))


def vae_svd() -> ml_collections.ConfigDict:
  """AutoencoderKLTemporalDecoder (docs/weights.md §2b, §4)."""
  return ml_collections.ConfigDict(dict(
      in_channels=3,
      out_channels=3,
      block_out_channels=(128, 256, 512, 512),
      layers_per_block=2,
      latent_channels=4,
      num_groups=32,
      scaling_factor=0.18215,
      # Frames decoded together by the temporal decoder (sgm `decoding_t`; 14 at test, 2 in training
      # previews). Decoding in chunks changes the result: the temporal convs see one chunk at a time.
      decode_chunk_size=14,
  ))


def clip_vit_h14() -> ml_collections.ConfigDict:
  """OpenCLIP ViT-H/14 image tower with projection (transformers CLIPVisionModelWithProjection)."""
  return ml_collections.ConfigDict(dict(
      hidden_size=1280,
      num_layers=32,
      num_heads=16,
      intermediate_size=5120,
      patch_size=14,
      image_size=224,
      projection_dim=1024,
      layer_norm_eps=1e-5,
      hidden_act='gelu',  # exact erf GELU
  ))


def svd() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      name='svd',
      unet=unet_svd(),
      camera=ml_collections.ConfigDict(dict(embedder='none', embed_dim=0)),
      vae=vae_svd(),
      clip=clip_vit_h14(),
      num_frames=14,
      # Compute dtype of matmuls/convs; parameters stay float32 and norms compute in float32.
      dtype='float32',
      param_dtype='float32',
      # Rematerialisation of each ResBlock / transformer block: 'none' | 'full' | 'dots' (save matmul
      # outputs). The reference trains with gradient checkpointing on (use_checkpoint=True).
      remat='none',
      # The attention core (gcd_jax/models/attention.py): 'auto' = Pallas flash on TPU, cuDNN on GPU (half
      # precision), the fused C++ kernel on CPU; or 'xla' | 'flash' | 'cudnn' | 'fused' | 'deferred'. Same
      # math; not stored with the weights' shapes, so it may differ between training and sampling.
      attention='auto',
  ))


def gcd() -> ml_collections.ConfigDict:
  cfg = svd()
  cfg.name = 'gcd'
  cfg.camera = camera_gcd()
  cfg.unet.aux_emb_dim = cfg.camera.embed_dim
  return cfg


def gcd_pose() -> ml_collections.ConfigDict:
  cfg = gcd()
  cfg.name = 'gcd_pose'
  cfg.camera.embedder = 'pose'
  return cfg


def tiny() -> ml_collections.ConfigDict:
  """Every code path of `gcd`, small enough for CPU tests (diffusers hard-codes 32 norm groups)."""
  cfg = gcd()
  cfg.name = 'tiny'
  cfg.unet.update(dict(
      model_channels=32, channel_mult=(1, 2), attention_resolutions=(1,), num_head_channels=16,
      context_dim=32, addition_time_embed_dim=16, adm_in_channels=48))
  cfg.camera.embed_dim = 8
  cfg.unet.aux_emb_dim = 8
  cfg.vae.block_out_channels = (32, 64)
  cfg.clip.update(dict(hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64,
                       patch_size=8, image_size=32, projection_dim=32))
  return cfg


def tiny_svd() -> ml_collections.ConfigDict:
  cfg = tiny()
  cfg.name = 'tiny_svd'
  cfg.camera = ml_collections.ConfigDict(dict(embedder='none', embed_dim=0))
  cfg.unet.aux_emb_dim = 0
  return cfg


def demo() -> ml_collections.ConfigDict:
  cfg = tiny()
  cfg.name = 'demo'
  cfg.unet.update(dict(channel_mult=(1, 2, 2), attention_resolutions=(2, 4)))
  cfg.camera.embed_dim = 16
  cfg.unet.aux_emb_dim = 16
  return cfg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """`arg` = 'preset[,key=value...]' with keys dtype, remat, attention, eps (see module docstring)."""
  parts = [p for p in (arg or 'gcd').split(',') if p]
  preset, options = parts[0], parts[1:]
  if preset not in PRESETS:
    raise ValueError(f'unknown model preset {preset!r}; choose one of {", ".join(PRESETS)}')
  cfg = globals()[preset]()
  for opt in options:
    key, _, value = opt.partition('=')
    if key == 'dtype':
      cfg.dtype = value
    elif key == 'remat':
      cfg.remat = value
    elif key == 'attention':
      cfg.attention = value
    elif key == 'eps':
      cfg.unet.resblock_norm_eps = value
    else:
      raise ValueError(f'unknown model option {key!r} in {arg!r}; options are dtype=, remat=, attention=, eps=')
  from gcd_jax.models.config import validate_model_config  # pylint: disable=g-import-not-at-top
  validate_model_config(cfg)
  return cfg
