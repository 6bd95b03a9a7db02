"""Checkpoint interop: transformers' Chameleon and OPT checkpoints <-> our decoder's params, and
released VQ-GAN image tokenizers (Meta's vqgan.ckpt + vqgan.yaml, transformers' ChameleonVQVAE).

Each format is one conversion table (``hf_chameleon.RULES``, ``hf_opt.RULES``) that both loading
and saving walk. Loaders return plain numpy trees shaped like the model's unboxed params.
"""

from cm3leon_jax.interop.errors import (CheckpointMismatchError, EncoderOnlyError,
                                        UnsupportedConfigError)
from cm3leon_jax.interop.hf_chameleon import load_chameleon, save_chameleon
from cm3leon_jax.interop.hf_chameleon import config_from_hf as chameleon_config_from_hf
from cm3leon_jax.interop.hf_chameleon_vqvae import ImportedVQGAN, load_chameleon_vqvae
from cm3leon_jax.interop.hf_opt import load_opt, save_opt
from cm3leon_jax.interop.hf_opt import config_from_hf as opt_config_from_hf
from cm3leon_jax.interop.layers_tree import stack_layers, unstack_layers
from cm3leon_jax.interop.meta_tokenizer import config_from_yaml as vqgan_config_from_yaml
from cm3leon_jax.interop.meta_tokenizer import load_meta_tokenizer

__all__ = [
    'CheckpointMismatchError', 'EncoderOnlyError', 'ImportedVQGAN', 'UnsupportedConfigError',
    'chameleon_config_from_hf', 'load_chameleon', 'load_chameleon_vqvae', 'load_meta_tokenizer',
    'load_opt', 'opt_config_from_hf', 'save_chameleon', 'save_opt', 'stack_layers',
    'unstack_layers', 'vqgan_config_from_yaml',
]
