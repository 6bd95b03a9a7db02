"""The multimodal vocabulary: stable layout, exact document round trips, seqio compatibility."""

import numpy as np
import pytest
import seqio
import tensorflow as tf
import tokenizers
from tokenizers import models, pre_tokenizers, trainers, decoders

from cm3leon_jax.tokenizers.text import TokenizersVocabulary
from cm3leon_jax.tokenizers.multimodal import Image, MultimodalVocabulary, Special, Text
from helpers import run_tool


@pytest.fixture(scope='module')
def sentencepiece_path(tmp_path_factory):
  output = str(tmp_path_factory.mktemp('spm') / 'captions.model')
  run_tool(['tools/train_text_tokenizer.py', f'--output={output}', '--num_examples=2000',
            '--vocab_size=100'])
  return output


@pytest.fixture(scope='module')
def vocab(sentencepiece_path):
  return MultimodalVocabulary(seqio.SentencePieceVocabulary(sentencepiece_path),
                              num_image_codes=512, num_sentinels=16)


def test_layout_is_stable_and_padded(vocab):
  text = vocab.text_vocabulary.vocab_size
  assert vocab.break_id == text and vocab.infill_id == text + 1
  assert vocab.eoss_id == text + 2 and vocab.mask_id == text + 3
  assert vocab.sentinel_id(0) == text + 4 and vocab.sentinel_id(15) == text + 19
  assert vocab.first_image_id == text + 20
  assert vocab.vocab_size % 128 == 0 and vocab.vocab_size >= text + 20 + 512
  assert (vocab.pad_id, vocab.eos_id) == (0, 1)


def test_image_code_mapping_round_trips(vocab):
  codes = np.arange(512).reshape(8, 64)
  ids = vocab.image_ids(codes)
  assert vocab.is_image(ids).all() and not vocab.is_image(np.array([vocab.mask_id, 5])).any()
  np.testing.assert_array_equal(vocab.image_codes(ids), codes)
  with pytest.raises(ValueError, match=r'Image codes must lie in \[0, 512\)'):
    vocab.image_ids([512])


@pytest.mark.parametrize('document', [
    [Text('a large red circle at the top left'), Image(np.arange(64))],
    [Image(np.arange(64) * 3), Text('a small blue square left of a large green triangle')],
    [Text('a small red circle'), Image([1, 2, 3]), Image([4, 5]), Text('a large blue square'),
     Special('<mask>'), Special('<sentinel:3>'), Text('a small red square'), Special('<eoss>')],
    [Special('<mask>'), Image(np.full(16, 511)), Special('<infill>'), Text('a small purple triangle')],
])
def test_document_round_trip_is_exact(vocab, document):
  ids = vocab.encode_document(document)
  assert vocab.decode_document(ids) == document
  assert max(ids) < vocab.vocab_size


def test_breaks_mark_every_switch_to_or_from_an_image(vocab):
  ids = vocab.encode_document([Text('a small red circle'), Image([7, 8])])
  text_ids = list(vocab.encode('a small red circle'))
  assert ids == text_ids + [vocab.break_id] + vocab.image_ids([7, 8]).tolist()


def test_bad_documents_are_refused(vocab):
  with pytest.raises(ValueError, match='must not be empty'):
    vocab.encode_document([Text('')])
  with pytest.raises(ValueError, match='implicit'):
    vocab.encode_document([Special('<break>')])
  with pytest.raises(ValueError, match="Unknown special token '<sentinel:16>'"):
    vocab.encode_document([Special('<sentinel:16>')])


def test_seqio_string_api_and_tf_paths(vocab):
  text = 'a large red circle left of a small blue square'
  ids = vocab.encode(text)
  assert vocab.decode(ids) == text
  np.testing.assert_array_equal(vocab.encode_tf(tf.constant(text)).numpy(), ids)
  mixed = list(ids) + [vocab.break_id] + vocab.image_ids([3]).tolist()
  assert vocab.decode(mixed) == text + '<break><img:3>'
  assert vocab.decode_tf(tf.constant([mixed])).numpy()[0].decode() == text + '<break><img:3>'


def test_tokenizers_json_vocabulary(tmp_path):
  tokenizer = tokenizers.Tokenizer(models.BPE(unk_token='<unk>'))
  tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
  tokenizer.decoder = decoders.Metaspace()
  trainer = trainers.BpeTrainer(vocab_size=80, special_tokens=['<pad>', '</s>', '<unk>'])
  tokenizer.train_from_iterator(['a small red circle', 'a large blue square'] * 50, trainer)
  path = str(tmp_path / 'tokenizer.json')
  tokenizer.save(path)
  text_vocab = TokenizersVocabulary(path, eos_token='</s>', unk_token='<unk>', pad_token='<pad>')
  vocab = MultimodalVocabulary(text_vocab, num_image_codes=64, num_sentinels=4)
  document = [Text('a small red circle'), Image([0, 63])]
  assert vocab.decode_document(vocab.encode_document(document)) == document
  np.testing.assert_array_equal(text_vocab.encode_tf(tf.constant('a large blue square')).numpy(),
                                text_vocab.encode('a large blue square'))
  with pytest.raises(ValueError, match="has no token '<bos>'"):
    TokenizersVocabulary(path, eos_token='<bos>')
