"""Tests of tools/train_clip.py: the word-level tokenizer, the loss, and a tiny end-to-end run."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

from cm3leon_jax.data.synthetic import SyntheticObject
from cm3leon_jax.interop import hf_clip
from cm3leon_jax.models.clip import CLIP

from cm3leon_jax.cli import train_clip as tool

CAPTIONS = ['a large red circle at the top left',
            'a small blue square left of a large green circle']


def test_saved_tokenizer_encodes_as_training_did(tmp_path):
  tokenizer = tool.build_tokenizer(CAPTIONS, max_length=16)
  ids, mask = tool.encode_texts(tokenizer, CAPTIONS + ['A RED zebra'], max_length=16)
  tokenizer.save(str(tmp_path / 'tokenizer.json'))
  loaded_ids, loaded_mask = hf_clip.ClipTextTokenizer(str(tmp_path), max_length=16)(
      CAPTIONS + ['A RED zebra'])
  np.testing.assert_array_equal(loaded_ids, ids)
  np.testing.assert_array_equal(loaded_mask, mask)
  bos, eos, unk = (tokenizer.token_to_id(t) for t in tool.SPECIALS)
  # Lower-cased, framed by begin and end, unseen words unknown, padded with the end token.
  assert list(ids[2, :6]) == [bos, tokenizer.token_to_id('a'), tokenizer.token_to_id('red'), unk,
                              eos, eos]
  assert list(mask[2, :6]) == [1, 1, 1, 1, 1, 0]


def test_contrastive_loss_prefers_matching_pairs():
  emb = jnp.eye(4)
  matched, accuracy = tool.contrastive_loss(emb, emb, jnp.log(10.0))
  shuffled, _ = tool.contrastive_loss(emb, emb[::-1], jnp.log(10.0))
  assert float(accuracy) == 1.0 and float(matched) < float(shuffled)


def test_main_object_is_first_large_else_first():
  small = SyntheticObject('circle', 'red', 'small', (0, 0, 8, 8))
  large = SyntheticObject('square', 'blue', 'large', (10, 0, 23, 13))
  assert tool.main_object([small, large]) == large
  assert tool.main_object([small]) == small


def test_train_saves_a_loadable_model_and_evaluates(tmp_path):
  out = str(tmp_path / 'clip')
  metrics = tool.train(out, steps=3, batch_size=8, learning_rate=1e-3, warmup_steps=1,
                       pool_size=32, patch_size=8, width=32, layers=1, projection_dim=16,
                       max_length=20, log_every=1, eval_examples=16)
  assert 0.0 <= metrics['text_to_image_hit_rate'] <= 1.0
  assert 0.0 <= metrics['image_to_text_recall_at_1'] <= 1.0
  with open(os.path.join(out, 'metrics.json')) as f:
    assert json.load(f)['steps'] == 3
  with open(os.path.join(out, 'config.json')) as f:
    extra = json.load(f)['cm3leon_clip']
  assert extra['tokenizer_file'] == 'tokenizer.json' and extra['clip_config']['patch_size'] == 8

  config, params = hf_clip.load_clip(out)
  ids, mask = hf_clip.ClipTextTokenizer(out)(CAPTIONS)
  assert ids.shape == (2, 20) and config.eos_token_id == ids[0, int(mask[0].sum()) - 1]
  images = np.zeros((2, 32, 32, 3), np.uint8)
  image_emb, text_emb = CLIP(config).apply(
      {'params': params}, hf_clip.preprocess_images(images, config), ids, mask)
  assert image_emb.shape == text_emb.shape == (2, 16)
  assert np.isfinite(image_emb).all() and np.isfinite(text_emb).all()


def test_captions_file_needs_tabs(tmp_path):
  path = tmp_path / 'pairs.tsv'
  path.write_text('no tab here\n')
  with pytest.raises(ValueError, match='image_path<TAB>caption'):
    tool.file_pairs(str(path), 32)


def test_a_training_pool_holding_held_out_examples_is_refused(tmp_path):
  # [999_990, 1_000_022) reaches into the held-out [1_000_000, 1_000_016).
  with pytest.raises(ValueError, match=r'pool \[999990, 1000022\) overlaps the held-out'):
    tool.train(str(tmp_path / 'clip'), steps=4, batch_size=8, learning_rate=1e-3,
               pool_size=32, pool_start=999_990, eval_examples=16)
