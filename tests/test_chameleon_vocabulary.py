"""Chameleon's vocabulary against the tokenizers library and transformers' image-token map, on a
tokenizer.json in Chameleon's layout written by the test."""

import json

import numpy as np
import pytest
import tokenizers
# transformers before TensorFlow (which the vocabulary imports through seqio).
from transformers.models.chameleon.modeling_chameleon import ChameleonImageVocabularyMapping

from cm3leon_jax.tokenizers.chameleon import (ChameleonVocabulary, ChameleonVocabularyError,
                                              image_code, image_token_name)
from cm3leon_jax.tokenizers.multimodal import Image, Special, Text
import chameleon_files

CODES = 16
TEXTS = ('a red circle left of a small blue square', 'café, naïve, 東京 and 🙂 emoji',
         '  leading spaces,\ttabs\nand new lines  ', 'digits 2024 and <racm3:break> typed in',
         'unseen words: xylophone zebra', '')


@pytest.fixture(scope='module')
def files(tmp_path_factory):
  path = str(tmp_path_factory.mktemp('chameleon') / 'tokenizer.json')
  names = chameleon_files.write_tokenizer(path, CODES)
  return path, names


@pytest.fixture(scope='module')
def vocab(files):
  return ChameleonVocabulary(files[0])


def test_image_token_names_spell_codes_in_letters():
  assert image_code('IMGIMGJAHZ') == 907 and image_token_name(907) == 'IMGIMGJAHZ'
  assert image_code('IMGIMGAZ') == 0 and image_token_name(8191) == 'IMGIMGIBJBZ'
  with pytest.raises(ChameleonVocabularyError, match="'IMGIMGXZ' is not an image token name"):
    image_code('IMGIMGXZ')


def test_text_encodes_as_the_tokenizers_library_with_s_and_pad_swapped(files, vocab):
  path, names = files
  oracle = tokenizers.Tokenizer.from_file(path)
  pad, bos = names['<pad>'], names['<s>']
  assert bos == 0 and vocab.bos_id == pad and vocab.encode('') == []
  for text in TEXTS:
    expected = [pad if i == bos else bos if i == pad else i
                for i in oracle.encode(text, add_special_tokens=False).ids]
    assert vocab.encode(text) == expected
    assert vocab.decode(vocab.encode(text)) == oracle.decode(
        oracle.encode(text, add_special_tokens=False).ids, skip_special_tokens=False)
  # A special typed in the text is the special token, as the tokenizers library reads it.
  assert vocab.break_id in vocab.encode(TEXTS[3])
  np.testing.assert_array_equal(vocab.encode_tf('a red circle').numpy(),
                                vocab.encode('a red circle'))


def test_no_s_is_read_as_padding(files, vocab):
  _, names = files
  assert vocab.token_name(0) == '<pad>' and vocab.token_name(vocab.bos_id) == '<s>'
  assert 0 not in vocab.encode_document([Text('a red circle'), Image(range(CODES))])
  checkpoint = np.array([[0, 5, names['<pad>']]])
  np.testing.assert_array_equal(vocab.library_ids(checkpoint), [[names['<pad>'], 5, 0]])
  np.testing.assert_array_equal(vocab.checkpoint_ids(vocab.library_ids(checkpoint)), checkpoint)
  table = np.arange(40.0).reshape(10, 4)  # Row r of a checkpoint's embedding is token r's.
  swapped = vocab.swap_rows(table)
  np.testing.assert_array_equal(swapped[vocab.bos_id], table[names['<s>']])
  np.testing.assert_array_equal(swapped[0], table[names['<pad>']])
  np.testing.assert_array_equal(swapped[5:], table[5:])


def test_image_ids_follow_the_files_names_as_transformers_maps_them(files, vocab):
  path, names = files
  mapping = ChameleonImageVocabularyMapping(names)
  codes = np.arange(CODES)
  expected = [mapping.img2bpe[c] for c in codes]
  assert expected != sorted(expected)  # The fixture's map is not code + offset.
  np.testing.assert_array_equal(vocab.image_ids(codes), vocab.library_ids(expected))
  np.testing.assert_array_equal(vocab.image_codes(vocab.image_ids(codes[::-1])), codes[::-1])
  assert (vocab.first_image_id, vocab.num_image_codes) == (4, CODES)
  assert vocab.is_image(np.array(expected)).all()
  assert not vocab.is_image(np.array([vocab.break_id, vocab.eoss_id, vocab.bos_id])).any()
  with pytest.raises(ValueError, match='not image tokens'):
    vocab.image_codes([vocab.break_id])


def test_kinds_of_ids(vocab):
  text = vocab.encode('a red circle')
  assert vocab.is_text(text).all()
  specials = [vocab.bos_id, vocab.eos_id, vocab.break_id, vocab.eoss_id, vocab.sentinel_id(2), 0]
  assert not vocab.is_text(specials + vocab.image_ids([0, 1]).tolist()).any()
  assert '<sentinel:2>' in vocab.special_names and '<racm3:break>' in vocab.special_names
  assert (vocab.image_open_id, vocab.image_close_id) == (vocab.break_id, vocab.eoss_id)
  with pytest.raises(ChameleonVocabularyError, match="has no '<mask>'"):
    _ = vocab.mask_id


def test_documents_wrap_images_in_begin_and_end_image_and_decode_back(vocab):
  document = [Text('a red circle'), Image([3, 1, 4, 1]), Text(' then'), Special('<sentinel:1>'),
              Image([15, 0])]
  ids = vocab.encode_document(document)
  assert ids[len(vocab.encode('a red circle'))] == vocab.break_id
  start = ids.index(vocab.break_id)
  assert ids[start + 5] == vocab.eoss_id
  np.testing.assert_array_equal(ids[start + 1:start + 5], vocab.image_ids([3, 1, 4, 1]))
  assert vocab.decode_document(ids) == document


def test_bad_files_get_one_clear_message_each(tmp_path, files):
  missing = str(tmp_path / 'missing.json')
  chameleon_files.write_tokenizer(missing, CODES, drop_code=7)
  with pytest.raises(ChameleonVocabularyError, match=r'lacks codes \[7\]'):
    ChameleonVocabulary(missing)
  path, names = files
  with pytest.raises(ChameleonVocabularyError, match='codebook has 32 codes'):
    ChameleonVocabulary(path, num_image_codes=32)
  wrong_map = dict(names, IMGIMGBZ=names['IMGIMGBZ'] + 1)
  with pytest.raises(ChameleonVocabularyError, match="vocabulary_map disagrees.*'IMGIMGBZ'"):
    ChameleonVocabulary(path, vocabulary_map=wrong_map)
  text_only = tmp_path / 'text.json'
  document = json.loads(open(path, encoding='utf-8').read())
  document['model']['vocab'] = {k: v for k, v in document['model']['vocab'].items()
                                if not k.startswith('IMGIMG')}
  text_only.write_text(json.dumps(document), encoding='utf-8')
  with pytest.raises(ChameleonVocabularyError, match='has no image tokens'):
    ChameleonVocabulary(str(text_only))
  split = tmp_path / 'split.json'  # One image token moved far from the others.
  document = json.loads(open(path, encoding='utf-8').read())
  document['model']['vocab']['IMGIMGBZ'] = max(document['model']['vocab'].values()) + 1
  split.write_text(json.dumps(document), encoding='utf-8')
  with pytest.raises(ChameleonVocabularyError, match='do not occupy one block'):
    ChameleonVocabulary(str(split))
