"""Meta's Chameleon release -> a transformers Chameleon folder (what transformers' own conversion
script writes), for users who run both.

The decoder is read through ``meta_chameleon`` (weights_only, shard by shard) and written with
``hf_chameleon``'s table; the VQ-GAN's encoder goes under model.vqmodel.*, Meta's full VQ-GAN is
kept in tokenizer/ (transformers' model cannot decode images), and the tokenizer file names
<reserved08707> '<image>' as transformers' conversion does.
"""

import json
import os
import shutil
from typing import Dict

from cm3leon_jax.interop import hf_chameleon, hf_chameleon_vqvae
from cm3leon_jax.interop.meta_chameleon import (ReleaseLayoutError, load_meta_chameleon,
                                                release_folders)
from cm3leon_jax.interop.meta_tokenizer import config_from_yaml
from cm3leon_jax.interop.torch_files import load_torch_state_dict

TEXT_TOKENIZER, VQGAN_CHECKPOINT, VQGAN_YAML = 'text_tokenizer.json', 'vqgan.ckpt', 'vqgan.yaml'
# transformers' conversion names Meta's <reserved08707> '<image>': its processor's placeholder.
_IMAGE_PLACEHOLDER = ('<reserved08707>', '<image>')


def transformers_tokenizer(path: str) -> Dict:
  """Meta's text_tokenizer.json as transformers' conversion rewrites it: <reserved08707>
  becomes <image>."""
  with open(path, encoding='utf-8') as f:
    document = json.load(f)
  old, new = _IMAGE_PLACEHOLDER
  vocab = document.get('model', {}).get('vocab', {})
  if old in vocab:
    vocab[new] = vocab.pop(old)
  for token in document.get('added_tokens', []):
    if token['content'] == old:
      token['content'] = new
  return document


def convert_to_transformers(release: str, output_dir: str, dtype: str = 'bfloat16') -> str:
  """Write Meta's release (or one of its models/<size>) as a transformers Chameleon folder:
  config.json with the vocabulary_map and vq_config, model.safetensors with the decoder and the
  VQ-GAN's encoder (model.vqmodel.*), tokenizer.json, and Meta's full VQ-GAN in tokenizer/ (the
  encoder-only transformers model cannot decode images). Returns `output_dir`."""
  located = release_folders(release)
  if located is None:
    raise ReleaseLayoutError(f'{release} is not Meta\'s Chameleon release: expected '
                             'models/<size>/params.json (or a folder holding params.json).')
  model_dir, tokenizer_dir = located
  paths = {name: os.path.join(tokenizer_dir, name)
           for name in (TEXT_TOKENIZER, VQGAN_CHECKPOINT, VQGAN_YAML)}
  missing = [p for p in paths.values() if not os.path.isfile(p)]
  if missing:
    raise ReleaseLayoutError(f'Meta\'s release lacks {", ".join(missing)}.')
  config, params = load_meta_chameleon(model_dir, dtype=dtype, param_dtype=dtype,
                                       scan_layers=False)
  tokenizer = transformers_tokenizer(paths[TEXT_TOKENIZER])
  vocabulary_map = dict(tokenizer['model']['vocab'])
  vocabulary_map.update({t['content']: t['id'] for t in tokenizer.get('added_tokens', [])})
  vq_tensors = {f'model.vqmodel.{name}': value
                for name, value in load_torch_state_dict(paths[VQGAN_CHECKPOINT]).items()
                if not name.startswith(('decoder.', 'loss.'))}
  extra = {'vq_config': hf_chameleon_vqvae.config_to_hf(config_from_yaml(paths[VQGAN_YAML])),
           'vocabulary_map': vocabulary_map}
  hf_chameleon.save_chameleon(output_dir, config, params, dtype, extra, vq_tensors)
  with open(os.path.join(output_dir, 'tokenizer.json'), 'w', encoding='utf-8') as f:
    json.dump(tokenizer, f, ensure_ascii=False)
  os.makedirs(os.path.join(output_dir, 'tokenizer'), exist_ok=True)
  for name in (VQGAN_CHECKPOINT, VQGAN_YAML):
    shutil.copyfile(paths[name], os.path.join(output_dir, 'tokenizer', name))
  return output_dir
