"""The preprocessing pipeline: sources -> Beam -> document store, including bad input."""

import io
import json

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

import data_helpers
from cm3leon_jax.data import images as image_lib
from cm3leon_jax.data import preprocess
from cm3leon_jax.data.sources import CocoCaptionsSource, JsonlSource, SyntheticSource, read_ranges
from cm3leon_jax.data.store import DocumentStore, from_example_bytes, to_example_bytes, Document
from cm3leon_jax.data.synthetic import SyntheticDataset
from cm3leon_jax.tokenizers.image import ImageTokenizer


@pytest.fixture(scope='module')
def tokenizers(shared_tokenizers):
  return shared_tokenizers


def _run(source, directory, tokenizers, **overrides):
  config = data_helpers.preprocess_config(directory, *tokenizers, **overrides)
  preprocess.run(source, config)
  return DocumentStore(directory)


def test_read_ranges_cover_every_record_once():
  assert read_ranges(10, 3) == [(0, 3), (3, 7), (7, 10)]
  assert read_ranges(2, 16) == [(0, 1), (1, 2)]
  assert read_ranges(0, 4) == []


def test_document_round_trips_through_its_tf_example():
  doc = Document('a#1', 3, 1, 'a red circle', np.array([5, 6], np.int32),
                 np.arange(16, dtype=np.int32), {'k': 'v'}, ('b', 'c'),
                 (np.array([1, 2, 3]), np.array([4])), (np.arange(16), np.arange(16) + 1))
  back = from_example_bytes(to_example_bytes(doc))
  assert (back.id, back.index, back.caption_index, back.text, back.metadata,
          back.neighbour_ids) == ('a#1', 3, 1, 'a red circle', {'k': 'v'}, ('b', 'c'))
  for got, want in [(back.text_ids, doc.text_ids), (back.image_codes, doc.image_codes)] + list(
      zip(back.neighbour_text_ids + back.neighbour_image_codes,
          doc.neighbour_text_ids + doc.neighbour_image_codes)):
    np.testing.assert_array_equal(got, want)


def test_synthetic_store_holds_the_tokens_of_every_pair(tmp_path, tokenizers):
  store = _run(SyntheticSource(24), tmp_path / 'train', tokenizers)
  docs = list(store.documents())
  assert [d.index for d in docs] == list(range(24))
  assert store.num_documents == 24 and store.manifest['num_bad'] == 0
  assert store.manifest['tokens_per_image'] == 16
  examples = list(SyntheticDataset().examples(0, 24))
  codes = ImageTokenizer.load(tokenizers[1]).encode(
      np.stack([image_lib.preprocess(Image.fromarray(e.image), 32) for e in examples]))
  vocab = store.vocabulary()
  for doc, example, want_codes in zip(docs, examples, np.asarray(codes)):
    assert doc.id == f'synthetic/train/{example.index}'
    assert doc.text == example.caption
    assert vocab.decode(doc.text_ids.tolist()) == example.caption
    np.testing.assert_array_equal(doc.image_codes, want_codes.ravel())


def _jpeg(pixels, mode='RGB') -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(pixels).convert(mode).save(buffer, 'JPEG')
  return buffer.getvalue()


def _write_bad_input_corpus(folder) -> dict:
  """Image files and a JSONL manifest mixing good and bad records; returns what to expect."""
  pixels = SyntheticDataset()[0].image
  files = {'good.jpg': _jpeg(pixels), 'cmyk.jpg': _jpeg(pixels, 'CMYK'),
           'truncated.jpg': _jpeg(pixels)[:200], 'empty.jpg': b''}
  for name, data in files.items():
    (folder / name).write_bytes(data)
  Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(folder / 'tiny.png')
  deep = (np.arange(32 * 32, dtype=np.uint16).reshape(32, 32) * 60)
  Image.fromarray(deep).save(folder / 'deep.png')  # uint16 -> mode I;16
  line = lambda image, text: json.dumps({'image': image, 'text': text}).encode()
  lines = [line('good.jpg', 'a red circle'), line('cmyk.jpg', 'a blue square'),
           line('deep.png', 'a grey ramp'), line('truncated.jpg', 'cut short'),
           line('empty.jpg', 'zero bytes'), line('tiny.png', 'one pixel'),
           line('missing.jpg', 'no such file'), json.dumps({'text': 'text only'}).encode(),
           line('good.jpg', '   '), line('good.jpg', 'circle ' * 400),
           b'{"image": "good.jpg", "text": "caf\xe9 latin-1"}', b'{not json']
  (folder / 'pairs.jsonl').write_bytes(b'\n'.join(lines) + b'\n')
  return {'good': ['pairs.jsonl:1', 'pairs.jsonl:2', 'pairs.jsonl:3'],
          'bad': {'pairs.jsonl:4': 'bad_image', 'pairs.jsonl:5': 'bad_image',
                  'pairs.jsonl:6': 'bad_image', 'pairs.jsonl:7': 'bad_image',
                  'pairs.jsonl:8': 'no_image', 'pairs.jsonl:9': 'empty_text',
                  'pairs.jsonl:10': 'text_too_long', 'pairs.jsonl:11': 'unreadable_record',
                  'pairs.jsonl:12': 'unreadable_record'}}


def test_bad_input_is_counted_named_and_skipped_and_nothing_good_is_lost(tmp_path, tokenizers):
  expected = _write_bad_input_corpus(tmp_path)
  store = _run(JsonlSource(str(tmp_path / 'pairs.jsonl')), tmp_path / 'store', tokenizers,
               max_text_tokens=256)
  assert [d.id for d in store.documents()] == expected['good']
  with open(tmp_path / 'store' / 'bad_records.jsonl', encoding='utf-8') as f:
    bad = [json.loads(line) for line in f]
  assert {b['id']: b['reason'] for b in bad} == expected['bad']
  assert all(b['message'] for b in bad)
  manifest = store.manifest
  assert manifest['num_documents'] == 3 and manifest['num_bad'] == len(expected['bad'])
  assert manifest['bad_by_reason']['bad_image'] == 4
  assert sum(manifest['bad_by_reason'].values()) == manifest['num_bad']
  messages = {b['id']: b['message'] for b in bad}
  assert 'empty file' in messages['pairs.jsonl:5'] and 'smaller than' in messages['pairs.jsonl:6']
  assert 'UTF-8' in messages['pairs.jsonl:11'] and 'JSON' in messages['pairs.jsonl:12']


def test_coco_captions_through_mock_data_makes_one_document_per_caption(tmp_path, tokenizers):
  with tfds.testing.mock_data(num_examples=5):
    source = CocoCaptionsSource('train')
    records = [r for r in source.read(0, source.num_records())]
    store = _run(source, tmp_path / 'coco', tokenizers, captions_per_image=2)
  usable = [r for r in records if min(r.image.shape[:2]) >= image_lib.DEFAULT_MIN_SIDE]
  docs = list(store.documents())
  assert [d.id for d in docs] == [f'{r.id}#{k}' for r in usable for k in range(2)]
  assert all(d.text == r.texts[d.caption_index] for d in docs for r in usable if d.index == r.index)
  assert store.manifest['source']['source'] == 'tfds'
  assert store.manifest['num_bad'] == len(records) - len(usable)


def test_store_errors_name_the_folder(tmp_path):
  with pytest.raises(ValueError, match='no manifest.json'):
    DocumentStore(tmp_path)
  with pytest.raises(FileNotFoundError, match='does not exist'):
    JsonlSource(str(tmp_path / 'nope.jsonl'))
  with pytest.raises(ValueError, match='Unknown synthetic split'):
    SyntheticSource(3, 'dev')
