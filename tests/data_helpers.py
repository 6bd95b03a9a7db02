"""Tiny tokenizers and stores that the data tests build for themselves, and readers of the
seqio batches made from them."""

import collections
import json
import os

import jax
import numpy as np
import seqio

from cm3leon_jax.data import objective
from cm3leon_jax.data import preprocess
from cm3leon_jax.data.assembly import AssemblyConfig, TokenLayout
from cm3leon_jax.data.seqio_ops import CM3FeatureConverter
from cm3leon_jax.data.store import DocumentStore, write_shard
from cm3leon_jax.tokenizers.image import ImageTokenizer
from cm3leon_jax.models.vqgan import VQGAN
from cm3leon_jax.cli import train_text_tokenizer
from cm3leon_jax.models.vqgan_config import VQGANConfig
from cm3leon_jax.tokenizers.multimodal import Image, Text

LENGTH = 128  # Task feature length of the test batches.

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
  params = jax.jit(model.init)(jax.random.key(0), np.zeros((1, 32, 32, 3), np.float32))['params']
  return ImageTokenizer(TOKENIZER_CONFIG, params).save(os.path.join(directory, 'image_tokenizer'))


def preprocess_config(directory, text_vocabulary, image_tokenizer, **overrides):
  """A PreprocessConfig writing under `directory`, with small batches and shards."""
  settings = dict(output_dir=os.fspath(directory), text_vocabulary=text_vocabulary,
                  image_tokenizer=image_tokenizer, num_shards=2, batch_size=8, num_read_ranges=4)
  settings.update(overrides)
  return preprocess.PreprocessConfig(**settings)


def batches(task_name, split='train', seed=7, shuffle=False, num_epochs=1, use_cached=False):
  """All packed batches of one epoch, as numpy."""
  task = seqio.get_mixture_or_task(task_name)
  dataset = task.get_dataset({'targets': LENGTH}, split=split, shuffle=shuffle, seed=seed,
                             num_epochs=num_epochs, use_cached=use_cached)
  converted = CM3FeatureConverter(pack=True)(dataset, {'targets': LENGTH})
  return list(converted.batch(4).as_numpy_iterator())


def examples_of(batch_list):
  """(targets, loss weights) of every packed example, in order."""
  for batch in batch_list:
    for row in range(len(batch['decoder_target_tokens'])):
      segments = batch['decoder_segment_ids'][row]
      for segment in np.unique(segments[segments > 0]):
        where = segments == segment
        yield batch['decoder_target_tokens'][row][where], batch['decoder_loss_weights'][row][where]


def decoded_documents(batch_list, vocab, config=AssemblyConfig()):
  """Every example's documents, un-rearranged and decoded: lists of (text, image codes)."""
  layout = TokenLayout.from_vocabulary(vocab)
  for targets, _ in examples_of(batch_list):
    assert targets[-1] == vocab.eos_id
    restored = objective.restore(targets[:-1], layout.cm3, config.cm3)
    documents = []
    for ids in np.split(restored, np.flatnonzero(restored == vocab.eos_id)):
      segments = vocab.decode_document([i for i in ids.tolist() if i != vocab.eos_id])
      documents.append((''.join(s.text for s in segments if isinstance(s, Text)),
                        tuple(c for s in segments if isinstance(s, Image) for c in s.codes)))
    yield documents


def stored(store_dir, split='train'):
  """The store's documents as (decoded text ids, image codes); text the vocabulary lacks is unk."""
  store = DocumentStore(os.path.join(store_dir, split))
  vocab = store.vocabulary()
  return collections.Counter((vocab.decode(d.text_ids.tolist()), tuple(d.image_codes.tolist()))
                             for d in store.documents())


def write_split_like(split_dir, documents, like_split_dir, **manifest_changes):
  """A one-shard store split of `documents` with the vocabulary and manifest of another split."""
  write_shard(str(split_dir), 0, 1, documents)
  manifest = dict(DocumentStore(str(like_split_dir)).manifest, num_documents=len(documents),
                  shards=[{'file': 'documents-00000-of-00001.tfrecord',
                           'num_documents': len(documents)}], **manifest_changes)
  with open(os.path.join(split_dir, 'manifest.json'), 'w') as f:
    json.dump(manifest, f)
  vocab_file = manifest['vocabulary']['text_vocabulary']
  with open(os.path.join(like_split_dir, vocab_file), 'rb') as source:
    with open(os.path.join(split_dir, vocab_file), 'wb') as target:
      target.write(source.read())


def synthetic_edits(dataset, scenes):
  """The edits of the first `scenes` synthetic scenes (those that admit one)."""
  from cm3leon_jax.data import sft_synthetic  # pylint: disable=g-import-not-at-top
  return [e for e in (sft_synthetic.edit_example(dataset, i) for i in range(scenes)) if e]
