"""transformers' ChameleonVQVAE (the image tokenizer inside Chameleon checkpoints) -> our VQGAN.

transformers keeps only the encoder half of Chameleon's VQ-GAN (encoder, quant_conv, quantize,
post_quant_conv) under taming's own parameter names, so the taming naming rule of
``taming_vqgan.torch_name`` maps it as is. Without a decoder the import can turn images into codes
but not codes into images; ``ImportedVQGAN.decode`` says so and names the files that can.

Usage::

  tokenizer = load_chameleon_vqvae('/path/to/chameleon-7b')   # a save_pretrained directory
  codes = tokenizer.encode(images)                            # NHWC in [-1, 1] -> int32 [B, h, w]
"""

import functools
from typing import Any, Dict, Mapping, NamedTuple, Optional, Union

import jax
import numpy as np
from absl import logging

from cm3leon_jax.interop.checkpoint_files import CheckpointFiles, read_config
from cm3leon_jax.interop.errors import EncoderOnlyError, UnsupportedConfigError
from cm3leon_jax.interop.taming_vqgan import params_from_torch_state_dict
from cm3leon_jax.models.config import ConfigError
from cm3leon_jax.models.vqgan import VQGAN
from cm3leon_jax.models.vqgan_config import VQGANConfig

# Where the VQ-VAE's tensors sit in a ChameleonForConditionalGeneration / ChameleonModel checkpoint.
_PREFIXES = ('model.vqmodel.', 'vqmodel.')
# transformers' ChameleonVQVAEConfig defaults, for fields a config.json leaves out.
_HF_DEFAULTS = {
    'embed_dim': 256, 'num_embeddings': 8192, 'double_latent': False, 'latent_channels': 256,
    'resolution': 512, 'in_channels': 3, 'base_channels': 128,
    'channel_multiplier': [1, 1, 2, 2, 4], 'num_res_blocks': 2, 'attn_resolutions': None,
    'dropout': 0.0, 'attn_type': 'vanilla', 'beta': 0.25,
}
# Our VQGANConfig field <- transformers' ChameleonVQVAEConfig field.
_FIELD_OF = {
    'embed_dim': 'embed_dim', 'n_embed': 'num_embeddings', 'double_z': 'double_latent',
    'z_channels': 'latent_channels', 'resolution': 'resolution', 'in_channels': 'in_channels',
    'ch': 'base_channels', 'ch_mult': 'channel_multiplier', 'num_res_blocks': 'num_res_blocks',
    'attn_resolutions': 'attn_resolutions', 'dropout': 'dropout', 'beta': 'beta',
}
NO_DECODER_MESSAGE = (
    "transformers' ChameleonVQVAE holds only the encoder half of Chameleon's VQ-GAN, so this "
    "tokenizer can encode images but not decode codes. Decoding needs the full VQ-GAN checkpoint: "
    "Meta's Chameleon release files vqgan.ckpt + vqgan.yaml, loaded with "
    'cm3leon_jax.interop.meta_tokenizer.load_meta_tokenizer.')


@functools.lru_cache(maxsize=None)
def _jitted(config: VQGANConfig, method_name: str):
  # One compiled function per (config, method), shared by every tokenizer with that config.
  method = getattr(VQGAN, method_name)
  return jax.jit(lambda params, x: VQGAN(config).apply({'params': params}, x, method=method))


class ImportedVQGAN(NamedTuple):
  """An imported VQ-GAN: unpacks as (config, params, encoder_only) and encodes / decodes."""

  config: VQGANConfig
  params: Dict[str, Any]
  encoder_only: bool

  def encode(self, images) -> jax.Array:
    """NHWC float images in [-1, 1] -> int32 codes [B, h, w]."""
    return _jitted(self.config, 'encode_to_codes')(self.params, images)

  def decode(self, codes) -> jax.Array:
    """int32 codes [B, h, w] -> NHWC images; raises EncoderOnlyError without decoder weights."""
    if self.encoder_only:
      raise EncoderOnlyError(NO_DECODER_MESSAGE)
    return _jitted(self.config, 'decode_codes')(self.params, codes)


def config_from_hf(vq_config: Mapping[str, Any]) -> VQGANConfig:
  """Our VQGANConfig of a ChameleonVQVAEConfig dict (a config.json or its 'vq_config').

  Raises:
    UnsupportedConfigError: a field our VQGAN cannot represent (attn_type other than 'vanilla'
      drops the middle AttnBlock; double_latent gives the encoder a variance half).
  """
  hf = {**_HF_DEFAULTS, **{k: v for k, v in vq_config.items() if v is not None}}
  if hf['attn_type'] != 'vanilla':
    raise UnsupportedConfigError(
        f"ChameleonVQVAEConfig.attn_type={hf['attn_type']!r} is not supported (only 'vanilla').")
  values = {ours: hf[theirs] for ours, theirs in _FIELD_OF.items()}
  values['attn_resolutions'] = values['attn_resolutions'] or ()
  try:
    return VQGANConfig(**values)
  except ConfigError as e:
    raise UnsupportedConfigError(f'ChameleonVQVAEConfig: {e}') from e


def config_to_hf(config: VQGANConfig) -> Dict[str, Any]:
  """The ChameleonVQVAEConfig dict (config.json's vq_config) of our VQGANConfig."""
  hf = {theirs: getattr(config, ours) for ours, theirs in _FIELD_OF.items()}
  hf.update(channel_multiplier=list(config.ch_mult), attn_resolutions=list(config.attn_resolutions),
            attn_type='vanilla', out_channels=config.in_channels)
  return hf


def _vq_config_of(config_json: Mapping[str, Any]) -> Mapping[str, Any]:
  # A Chameleon model's config nests the VQ-VAE's; a VQ-VAE saved alone is its own.
  return config_json.get('vq_config', config_json)


def _tokenizer_name(name: str) -> Optional[str]:
  """The VQ-VAE's own name of a checkpoint tensor, or None for the text decoder's tensors."""
  for prefix in _PREFIXES:
    if name.startswith(prefix):
      return name[len(prefix):]
  # A ChameleonVQVAE saved alone has no prefix; a full model's other tensors are the decoder's.
  return None if name.startswith(('model.', 'lm_head.')) else name


def _read_directory(directory: str) -> Dict[str, np.ndarray]:
  # Only the tokenizer's tensors are read, not the (large) text decoder's.
  files = CheckpointFiles(directory)
  return {name: files.read(name) for name in files.names if _tokenizer_name(name) is not None}


def load_chameleon_vqvae(directory_or_state_dict: Union[str, Mapping[str, Any]],
                         config_json: Optional[Mapping[str, Any]] = None) -> ImportedVQGAN:
  """The encoder-only VQ-GAN of a transformers Chameleon checkpoint.

  Args:
    directory_or_state_dict: a ``save_pretrained`` directory of ChameleonForConditionalGeneration
      (tensors under 'model.vqmodel.') or of ChameleonVQVAE alone, or such a state dict (arrays or
      CPU torch tensors).
    config_json: the checkpoint's config.json as a dict (a Chameleon config with 'vq_config', or a
      ChameleonVQVAEConfig); read from the directory when omitted.

  Returns:
    ImportedVQGAN(config, params, encoder_only=True); its ``decode`` raises EncoderOnlyError.

  Raises:
    CheckpointMismatchError: missing, misshapen or unexpected VQ-VAE tensors (taming names).
    UnsupportedConfigError: see ``config_from_hf``.
  """
  if isinstance(directory_or_state_dict, str):
    if config_json is None:
      config_json = read_config(directory_or_state_dict)
    state_dict = _read_directory(directory_or_state_dict)
  elif config_json is None:
    raise ValueError('load_chameleon_vqvae needs config_json when given a state dict.')
  else:
    state_dict = directory_or_state_dict
  config = config_from_hf(_vq_config_of(config_json))
  tensors = {_tokenizer_name(name): np.asarray(value, dtype=np.float32)
             for name, value in state_dict.items() if _tokenizer_name(name) is not None}
  params = params_from_torch_state_dict(tensors, config, without=('decoder',))
  logging.info('Imported the encoder-only Chameleon VQ-VAE (%d tensors): %s', len(tensors), config)
  return ImportedVQGAN(config, params, encoder_only=True)
