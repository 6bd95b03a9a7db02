"""Tiny tokenizers and stores that the data tests build for themselves."""

import os
import sys

import jax
import numpy as np

from cm3leon_jax.data import preprocess
from cm3leon_jax.image_tokenizer import ImageTokenizer
from cm3leon_jax.models.vqgan import VQGAN
from cm3leon_jax.models.vqgan_config import VQGANConfig

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), 'tools'))
import train_text_tokenizer  # noqa: E402  (tools/ is not a package)

# A random-weight VQ-GAN: 32 px -> 4x4 codes of 64. Its codes are arbitrary but deterministic,
# which is all the data pipeline needs.
TOKENIZER_CONFIG = VQGANConfig(resolution=32, ch=32, ch_mult=(1, 1, 1, 1), num_res_blocks=1,
                               z_channels=16, embed_dim=8, n_embed=64)


def make_text_vocabulary(directory) -> str:
  """A 128-piece SentencePiece model trained on synthetic captions; returns its path."""
  captions = train_text_tokenizer.synthetic_captions(500)
  return train_text_tokenizer.train(captions, os.path.join(directory, 'text.model'), 128)


def make_image_tokenizer(directory) -> str:
  """A saved random-weight ImageTokenizer; returns its folder."""
  model = VQGAN(TOKENIZER_CONFIG)
  params = model.init(jax.random.key(0), np.zeros((1, 32, 32, 3), np.float32))['params']
  return ImageTokenizer(TOKENIZER_CONFIG, params).save(os.path.join(directory, 'image_tokenizer'))


def preprocess_config(directory, text_vocabulary, image_tokenizer, **overrides):
  """A PreprocessConfig writing under `directory`, with small batches and shards."""
  settings = dict(output_dir=os.fspath(directory), text_vocabulary=text_vocabulary,
                  image_tokenizer=image_tokenizer, num_shards=2, batch_size=8, num_read_ranges=4)
  settings.update(overrides)
  return preprocess.PreprocessConfig(**settings)
