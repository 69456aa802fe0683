"""Networks of SVD / GCD in Flax NNX (channels-last, per-frame rows B·T)."""

from gcd_jax.models.camera import CameraEmbedder, SphericalEmbedder, build_camera_embedder, spherical_features
from gcd_jax.models.clip import CLIPVisionModelWithProjection, build_clip, preprocess_frames_for_clip
from gcd_jax.models.gcd import GCDNetwork, build_gcd_network
from gcd_jax.models.unet import VideoUNet, build_unet
from gcd_jax.models.vae import (AutoencoderKLTemporalDecoder, build_vae, encode_conditioning,
                                encode_target, posterior_mode, posterior_sample)

__all__ = [
    'AutoencoderKLTemporalDecoder', 'CLIPVisionModelWithProjection', 'CameraEmbedder', 'GCDNetwork',
    'SphericalEmbedder', 'VideoUNet', 'build_camera_embedder', 'build_clip', 'build_gcd_network',
    'build_unet', 'build_vae', 'encode_conditioning', 'encode_target', 'posterior_mode',
    'posterior_sample', 'preprocess_frames_for_clip', 'spherical_features',
]
