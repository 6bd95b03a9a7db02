"""A tiny random model, random CLIPs and random FID weights for the evaluation tools' tests."""

import os

import fid_helpers
import shared_data
from helpers import model_and_params, tiny_config


def random_clip(directory, seed):
  """A random-weight CLIP folder (the pipeline needs a CLIP, not a good one)."""
  import jax  # pylint: disable=g-import-not-at-top
  from cm3leon_jax.cli import train_clip  # pylint: disable=g-import-not-at-top
  from cm3leon_jax.interop import hf_clip  # pylint: disable=g-import-not-at-top
  from cm3leon_jax.models.clip import CLIP  # pylint: disable=g-import-not-at-top
  images, captions, _ = train_clip.synthetic_pairs(0, 16, 32)
  tokenizer = train_clip.build_tokenizer(captions, 20)
  config = train_clip.clip_config(tokenizer, 32, 8, 32, 1, 16, 20)
  ids, mask = train_clip.encode_texts(tokenizer, captions[:1], 20)
  pixels = hf_clip.preprocess_images(images[:1], config)
  params = jax.jit(CLIP(config).init)(jax.random.key(seed), pixels, ids, mask)['params']
  train_clip.save(directory, config, params, 1.0, tokenizer, 20)


def shared_parts(tmp_path_factory, shared_tokenizers):
  """{'model': an exported tiny random model, 'rerank_clip', 'metric_clip': two random CLIPs,
  'inception': random FID weights (safetensors), 'reference_cache': a folder}, built once per run."""
  torch_home = fid_helpers.shared_torch_home(tmp_path_factory)

  def build(folder):
    from cm3leon_jax.data import objective  # pylint: disable=g-import-not-at-top
    from cm3leon_jax.data.store import text_vocabulary  # pylint: disable=g-import-not-at-top
    from cm3leon_jax.decoding.export import export_model  # pylint: disable=g-import-not-at-top
    from cm3leon_jax.decoding.pretrained import Pretrained  # pylint: disable=g-import-not-at-top
    from cm3leon_jax.tokenizers.multimodal import MultimodalVocabulary  # pylint: disable=g-import-not-at-top
    text, image_tokenizer = shared_tokenizers
    vocab = MultimodalVocabulary(text_vocabulary(text), num_image_codes=64, num_sentinels=8)
    model, params = model_and_params(tiny_config(vocab_size=vocab.vocab_size, max_length=96))
    export_model(Pretrained(model, params, vocab, objective.CM3Config(), image_tokenizer, folder),
                 os.path.join(folder, 'model'))
    for name, seed in (('rerank_clip', 0), ('metric_clip', 1)):
      random_clip(os.path.join(folder, name), seed)

  folder = shared_data.cached_folder(tmp_path_factory, 'eval_fid_parts', build)
  return {'model': os.path.join(folder, 'model'), 'rerank_clip': os.path.join(folder, 'rerank_clip'),
          'metric_clip': os.path.join(folder, 'metric_clip'),
          # The safetensors conversion: the tool then reads the weights without torch.
          'inception': os.path.join(torch_home, fid_helpers.SAFETENSORS_NAME),
          'reference_cache': str(tmp_path_factory.mktemp('reference_cache'))}
