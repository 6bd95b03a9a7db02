"""A 'chameleon'-family model written as a transformers Chameleon folder that transformers loads
and generates from, and that ``Pretrained.load`` reads back.

The folder holds what a released Chameleon checkpoint holds::

  config.json         ChameleonConfig, with the vocabulary_map (every token name -> id, the
                      IMGIMG names giving each image code's id) and the VQ-GAN's vq_config
  model.safetensors   the decoder and the VQ-GAN's encoder half (model.vqmodel.*)
  tokenizer.json      the vocabulary in one tokenizers file

For a model trained here (``MultimodalVocabulary``) the tokenizer file is written from its text
vocabulary, specials and image codes with every id unchanged (``tokenizers/tokenizer_file.py``).
A model loaded from a Chameleon checkpoint (``ChameleonVocabulary``) gets its own file back and
its parameters in the checkpoint's ids (``<s>`` and ``<pad>`` trade rows again).
"""

import json
import os
import shutil
from typing import Any, Dict, Tuple

import numpy as np

from cm3leon_jax.decoding import chameleon_folder
from cm3leon_jax.interop import hf_chameleon, hf_chameleon_vqvae
from cm3leon_jax.interop.meta_to_transformers import transformers_tokenizer
from cm3leon_jax.interop.taming_vqgan import torch_state_dict
from cm3leon_jax.tokenizers.chameleon import ChameleonVocabulary, token_map
from cm3leon_jax.tokenizers.image import ImageTokenizer
from cm3leon_jax.tokenizers.tokenizer_file import multimodal_tokenizer, vocabulary_map

VQ_PREFIX = 'model.vqmodel.'
# transformers' VQ model is the encoder half of the VQ-GAN.
_NOT_IN_TRANSFORMERS = ('decoder',)


def save_transformers_folder(output_dir: str, config, params, vocab, image_tokenizer:
                             ImageTokenizer, dtype=None) -> None:
  """Write the decoder `params` (this library's ids), `vocab` and the VQ-GAN's encoder as a
  transformers Chameleon folder (see module docstring)."""
  os.makedirs(output_dir, exist_ok=True)
  tokenizer_path = os.path.join(output_dir, chameleon_folder.TOKENIZER_FILE)
  if isinstance(vocab, ChameleonVocabulary):
    params = _in_checkpoint_ids(params, vocab)
    names = _write_chameleon_tokenizer(vocab, tokenizer_path)
  else:
    tokenizer = multimodal_tokenizer(vocab)
    tokenizer.save(tokenizer_path)
    names = vocabulary_map(tokenizer)
  vq_config, vq_tensors = _vq_parts(image_tokenizer)
  extra = {'vocabulary_map': names, 'vq_config': vq_config, **_token_ids(vocab)}
  hf_chameleon.save_chameleon(output_dir, config, params, dtype, extra, vq_tensors)


def _token_ids(vocab) -> Dict[str, Any]:
  """config.json's begin, end and pad ids (transformers' generate stops at the end id), in the
  ids the written files use."""
  to_file = getattr(vocab, 'checkpoint_ids', lambda ids: np.asarray(ids))
  bos = [int(to_file([i])[0]) for i in vocab.sequence_start_ids]
  return {'bos_token_id': bos[0] if bos else None, 'eos_token_id': int(to_file([vocab.eos_id])[0]),
          'pad_token_id': int(to_file([0])[0])}


def save_full_vqgan(path: str, image_tokenizer_path: str, image_tokenizer: ImageTokenizer) -> None:
  """The whole VQ-GAN (transformers keeps only its encoder) where a Chameleon folder's loader
  finds it: Meta's vqgan.ckpt + vqgan.yaml copied as they are, or this library's format."""
  meta_files = [os.path.join(image_tokenizer_path, name)
                for name in chameleon_folder.META_VQGAN_FILES]
  if all(os.path.isfile(f) for f in meta_files):
    os.makedirs(path, exist_ok=True)
    for f in meta_files:
      shutil.copyfile(f, os.path.join(path, os.path.basename(f)))
  else:
    image_tokenizer.save(path)


def _in_checkpoint_ids(params, vocab: ChameleonVocabulary):
  """A shallow copy of `params` whose id-indexed matrices are in the checkpoint's ids."""
  params = {**params}
  for path, axis in chameleon_folder.ID_AXES.items():
    module, name = path.split('/')
    params[module] = {**params[module],
                      name: vocab.swap_rows(np.asarray(params[module][name]), axis=axis)}
  return params


def _write_chameleon_tokenizer(vocab: ChameleonVocabulary, path: str) -> Dict[str, int]:
  """The checkpoint's own tokenizer file (Meta's renamed as transformers' conversion does);
  returns its vocabulary_map."""
  if os.path.basename(vocab.path) == chameleon_folder.META_TOKENIZER_FILE:
    with open(path, 'w', encoding='utf-8') as f:
      json.dump(transformers_tokenizer(vocab.path), f, ensure_ascii=False)
  else:
    shutil.copyfile(vocab.path, path)
  return token_map(path)


def _vq_parts(image_tokenizer: ImageTokenizer) -> Tuple[Dict[str, Any], Dict[str, np.ndarray]]:
  """(vq_config, tensors under model.vqmodel.*) of the VQ-GAN's encoder half."""
  tensors = torch_state_dict(image_tokenizer.params, image_tokenizer.config,
                             without=_NOT_IN_TRANSFORMERS)
  return (hf_chameleon_vqvae.config_to_hf(image_tokenizer.config),
          {VQ_PREFIX + name: value for name, value in tensors.items()})
