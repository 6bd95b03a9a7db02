"""Export a trained model as one self-contained folder that samplers and transformers can load.

An exported folder holds::

  config.json, model.safetensors   the decoder in transformers' layout: OPTForCausalLM for the
                                   'cm3leon' family, ChameleonForConditionalGeneration for
                                   'chameleon' (with the VQ-GAN's encoder half, as released
                                   Chameleon checkpoints hold it)
  tokenizer.json                   'chameleon' only: the vocabulary as one tokenizers file, the
                                   config's vocabulary_map naming every id (chameleon_export.py)
  model.json                       as in a training run, plus "weights" naming that layout
  text_vocabulary.model            the text vocabulary
  image_tokenizer/                 the VQ-GAN (ImageTokenizer.save)

so ``Pretrained.load(folder)`` and ``tools/generate.py --checkpoint=folder`` work on it exactly as
on the training run, without the optimizer state, the run's other files or absolute paths.

A model loaded from a Chameleon checkpoint is written back as a Chameleon folder of the same kind
(config.json, model.safetensors, tokenizer.json, the full VQ-GAN in tokenizer/), in the
checkpoint's own ids, with no model.json.
"""

import os
from typing import Optional

import numpy as np
from absl import logging

from cm3leon_jax.decoding import chameleon_export, chameleon_folder
from cm3leon_jax.decoding import pretrained as pretrained_lib
from cm3leon_jax.decoding.pretrained import Pretrained, PretrainedError
from cm3leon_jax.tokenizers.chameleon import ChameleonVocabulary

IMAGE_TOKENIZER_DIR = 'image_tokenizer'


def _save_weights(model: Pretrained, output_dir: str, dtype: Optional[str]) -> str:
  """Write the decoder in its family's transformers layout; returns the layout's name."""
  config = model.model.config
  if config.family not in pretrained_lib.WEIGHT_FORMATS:
    raise PretrainedError(f'No export layout for model family {config.family!r}.')
  if config.family == 'chameleon':
    chameleon_export.save_transformers_folder(output_dir, config, model.params, model.vocab,
                                              model.image_tokenizer, dtype)
  else:
    _, save = pretrained_lib.WEIGHT_FORMATS[config.family]
    save(output_dir, config, model.params, dtype)
  return config.family


def _check_output_dir(output_dir: str, source_dir: str) -> None:
  if os.path.abspath(output_dir) == os.path.abspath(source_dir):
    raise PretrainedError(f'The export folder {output_dir} is the model folder itself; '
                          'give another --output_dir.')
  if os.path.isdir(output_dir) and os.listdir(output_dir):
    raise PretrainedError(f'The export folder {output_dir} exists and is not empty; give a new '
                          'folder (exports never overwrite files).')


def export_model(model: Pretrained, output_dir: str, dtype: Optional[str] = None) -> str:
  """Write `model` (a loaded training run or export) as an exported folder; returns its path.

  Args:
    model: the model to export; its image tokenizer must exist (it is copied in).
    output_dir: a new or empty folder.
    dtype: dtype of the written weights, e.g. 'bfloat16' (halves the size); None keeps float32.
      Loading casts them back to the config's parameter dtype.

  Raises:
    PretrainedError: the folder is not new or empty, or the model names no image tokenizer.
  """
  _check_output_dir(output_dir, model.model_dir)
  tokenizer = model.image_tokenizer  # Raises, naming the fix, when the run names none.
  os.makedirs(output_dir, exist_ok=True)
  family = _save_weights(model, output_dir, dtype)
  if isinstance(model.vocab, ChameleonVocabulary):  # A Chameleon checkpoint stays one.
    full_vqgan = os.path.join(output_dir, chameleon_folder.IMAGE_TOKENIZER_DIR)
    chameleon_export.save_full_vqgan(full_vqgan, model.image_tokenizer_path, tokenizer)
    logging.info('Exported %s to %s as a Chameleon checkpoint.', model.model_dir, output_dir)
    return output_dir
  tokenizer.save(os.path.join(output_dir, IMAGE_TOKENIZER_DIR))
  weights = {'format': family, 'dtype': dtype or str(np.dtype(model.model.config.param_dtype))}
  pretrained_lib.write_model_files(output_dir, model.model.config, model.vocab,
                                   IMAGE_TOKENIZER_DIR, model.cm3, weights, model.loss_on)
  logging.info('Exported %s to %s (%s layout, %s weights).', model.model_dir, output_dir, family,
               weights['dtype'])
  return output_dir
