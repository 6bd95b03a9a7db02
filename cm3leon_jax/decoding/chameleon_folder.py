"""A Chameleon-family checkpoint folder (Chameleon, Anole, ...) loaded as everything sampling
needs, in either layout.

transformers'::

  folder/config.json               model_type "chameleon", its vocabulary_map and vq_config
  folder/model.safetensors         (or shards with an index) the decoder, and the VQ-GAN's
                                   encoder under model.vqmodel.*
  folder/tokenizer.json            text, special and image tokens in one file

Meta's release (the release folder, or one of its models/<size> folders)::

  models/7b/consolidated.pth + params.json       (30b: consolidated.00.pth ... .03.pth)
  tokenizer/text_tokenizer.json, vqgan.ckpt, vqgan.yaml

transformers keeps only the VQ-GAN's encoder, so images are decoded by Meta's ``vqgan.ckpt`` +
``vqgan.yaml``: put them in ``folder/tokenizer/`` (as Meta's release lays them out) or name their
folder as the image tokenizer.
"""

import os
from typing import Optional

from cm3leon_jax.interop import hf_chameleon, hf_chameleon_vqvae
from cm3leon_jax.interop.checkpoint_files import CONFIG, read_config
from cm3leon_jax.interop.meta_chameleon import (MetaChameleonFiles, config_from_meta,
                                                load_meta_chameleon, release_folders)
from cm3leon_jax.interop.meta_tokenizer import config_from_yaml, load_meta_tokenizer
from cm3leon_jax.models.config import DecoderConfig
from cm3leon_jax.tokenizers.chameleon import ChameleonVocabulary
from cm3leon_jax.tokenizers.image import ImageTokenizer, is_saved_image_tokenizer

TOKENIZER_FILE = 'tokenizer.json'
META_TOKENIZER_FILE = 'text_tokenizer.json'
META_VQGAN_FILES = ('vqgan.ckpt', 'vqgan.yaml')
# The full VQ-GAN's folder inside a checkpoint folder, as Meta's release names it.
IMAGE_TOKENIZER_DIR = 'tokenizer'
# The parameters indexed by token id, and the axis that is: where <s> and <pad> trade rows.
ID_AXES = {'embed/token': 0, 'lm_head/kernel': 1}


class ChameleonFolderError(ValueError):
  """A Chameleon folder that cannot be sampled from; the message names what is missing."""


def is_chameleon_folder(folder: str) -> bool:
  """Whether `folder` holds a Chameleon checkpoint: transformers' (config.json of that type) or
  Meta's release layout."""
  path = os.path.join(folder, CONFIG)
  if os.path.isfile(path):
    return read_config(folder).get('model_type') == 'chameleon'
  return release_folders(folder) is not None


def decoder_config(folder: str, **overrides) -> DecoderConfig:
  """The DecoderConfig of a Chameleon folder in either layout (no weight is read);
  `overrides` are DecoderConfig fields (dtype, param_dtype, scan_layers)."""
  meta = _meta_folders(folder)
  if meta is None:
    return hf_chameleon.config_from_hf(read_config(folder), **overrides)
  return config_from_meta(MetaChameleonFiles(meta[0]), **overrides)


def load(folder: str, config: DecoderConfig, place=None):
  """(params, vocabulary, image tokenizer folder or None) of a Chameleon folder in either layout.

  `place(path, array)` receives each parameter as it is read, in this library's ids (see
  ``mapping.load``), so a caller can put it on its devices at once (unscanned configs only).
  """
  meta = _meta_folders(folder)
  if meta is None:
    vocab, image_folder = load_vocabulary(folder), image_tokenizer_folder(folder)
  else:
    vocab, image_folder = load_meta_vocabulary(meta[1]), meta[1]
  check_decoder_fits(config, vocab, folder)

  def in_library_ids(path, x):
    if path in ID_AXES:  # <s> and <pad> trade places (see tokenizers/chameleon.py).
      x = vocab.swap_rows(x, axis=ID_AXES[path])
    return place(path, x) if place else x

  streamed = None if config.scan_layers else in_library_ids
  if meta is None:
    _, params = hf_chameleon.load_chameleon(folder, config, place=streamed)
  else:
    _, params = load_meta_chameleon(meta[0], config, place=streamed)
  if streamed is None:
    for path, axis in ID_AXES.items():
      module, name = path.split('/')
      params[module][name] = vocab.swap_rows(params[module][name], axis=axis)
  return params, vocab, image_folder


def _meta_folders(folder: str):
  """Meta's (model, tokenizer) folders, or None for a transformers folder."""
  return None if os.path.isfile(os.path.join(folder, CONFIG)) else release_folders(folder)


def load_vocabulary(folder: str) -> ChameleonVocabulary:
  """The folder's tokenizer.json, checked against its config's vocabulary_map and codebook."""
  path = os.path.join(folder, TOKENIZER_FILE)
  if not os.path.isfile(path):
    raise ChameleonFolderError(
        f'{folder} is a Chameleon checkpoint without its {TOKENIZER_FILE}: copy the one released '
        'with the weights (transformers\' layout) or tokenizer/text_tokenizer.json (Meta\'s).')
  config_json = read_config(folder)
  vq_config = hf_chameleon_vqvae.config_from_hf(config_json.get('vq_config') or {})
  return ChameleonVocabulary(path, config_json.get('vocabulary_map') or None, vq_config.n_embed)


def load_meta_vocabulary(tokenizer_dir: str) -> ChameleonVocabulary:
  """Meta's text_tokenizer.json, checked against vqgan.yaml's codebook."""
  path = os.path.join(tokenizer_dir, META_TOKENIZER_FILE)
  if not os.path.isfile(path):
    raise ChameleonFolderError(f'Meta\'s release lacks {path}: its tokenizer/ folder holds '
                               f'{META_TOKENIZER_FILE}, vqgan.ckpt and vqgan.yaml.')
  yaml_path = os.path.join(tokenizer_dir, META_VQGAN_FILES[1])
  codes = config_from_yaml(yaml_path).n_embed if os.path.isfile(yaml_path) else None
  return ChameleonVocabulary(path, num_image_codes=codes)


def image_tokenizer_folder(folder: str) -> Optional[str]:
  """Where the folder's full VQ-GAN is: the folder itself or its tokenizer/ (Meta's files, or
  an image tokenizer saved by this library, as an export writes it), or None."""
  for candidate in (folder, os.path.join(folder, IMAGE_TOKENIZER_DIR)):
    if all(os.path.isfile(os.path.join(candidate, name)) for name in META_VQGAN_FILES):
      return candidate
  saved = os.path.join(folder, IMAGE_TOKENIZER_DIR)
  return saved if is_saved_image_tokenizer(saved) else None


def load_image_tokenizer(path: str) -> ImageTokenizer:
  """An image tokenizer from Meta's ``vqgan.ckpt`` + ``vqgan.yaml`` folder, or one saved here."""
  if all(os.path.isfile(os.path.join(path, name)) for name in META_VQGAN_FILES):
    config, params = load_meta_tokenizer(*(os.path.join(path, n) for n in META_VQGAN_FILES))
    return ImageTokenizer(config, params)
  return ImageTokenizer.load(path)


def check_decoder_fits(config: DecoderConfig, vocab: ChameleonVocabulary, folder: str) -> None:
  """The decoder must have an output for every id of the tokenizer file."""
  if config.vocab_size < vocab.vocab_size:
    raise ChameleonFolderError(
        f'{folder}: the decoder has {config.vocab_size} ids but {TOKENIZER_FILE} holds '
        f'{vocab.vocab_size}.')
