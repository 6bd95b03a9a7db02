"""seqio tasks over document stores: batches decode back to the stored documents."""

import collections
import os

import numpy as np
import pytest
import seqio
import tensorflow_datasets as tfds

import data_helpers
from data_helpers import LENGTH, batches, decoded_documents, examples_of, stored
from helpers import ROOT, run_tool
from cm3leon_jax.data import preprocess
from cm3leon_jax.data.sources import CocoCaptionsSource, SyntheticSource
from cm3leon_jax.data.store import DocumentStore
import tasks



@pytest.fixture(scope='module')
def tokenizers(shared_tokenizers):
  return shared_tokenizers


@pytest.fixture(scope='module')
def synthetic_store(synthetic_data_dir):
  """<store>/train (80 documents) and <store>/validation (20), shared with other tests."""
  return os.path.join(synthetic_data_dir, 'synthetic')


def test_batches_decode_back_to_every_stored_document(synthetic_store):
  tasks.register_store_task('test_synthetic', synthetic_store)
  vocab = DocumentStore(os.path.join(synthetic_store, 'train')).vocabulary()
  for split in ('train', 'validation'):
    got = collections.Counter(documents[-1] for documents in
                              decoded_documents(batches('test_synthetic', split), vocab))
    assert got == stored(synthetic_store, split)


def test_decoder_features_and_loss_weights(synthetic_store):
  tasks.register_store_task('test_synthetic', synthetic_store)
  batch = batches('test_synthetic')[0]
  assert set(batch) == {'decoder_target_tokens', 'decoder_input_tokens', 'decoder_loss_weights',
                        'decoder_segment_ids', 'decoder_positions'}
  assert batch['decoder_target_tokens'].shape == (4, LENGTH)
  padding = batch['decoder_target_tokens'] == 0
  assert (batch['decoder_loss_weights'][padding] == 0).all()
  vocab = DocumentStore(os.path.join(synthetic_store, 'train')).vocabulary()
  sentinels = [vocab.sentinel_id(i) for i in range(16)]
  for targets, weights in examples_of([batch]):
    in_place = np.isin(targets, sentinels) & (np.cumsum(targets == vocab.infill_id) == 0)
    np.testing.assert_array_equal(weights == 0, in_place)


def test_same_seed_same_batches_other_seed_other_masking(synthetic_store):
  tasks.register_store_task('test_synthetic', synthetic_store)
  first, again = batches('test_synthetic', seed=3), batches('test_synthetic', seed=3)
  other = batches('test_synthetic', seed=4)
  for a, b in zip(first, again):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  assert any(not np.array_equal(a['decoder_target_tokens'], c['decoder_target_tokens'])
             for a, c in zip(first, other))


def test_retrieved_documents_come_before_the_query(synthetic_store, tmp_path):
  """A store whose records carry neighbours (as the retrieval stage writes them)."""
  docs = list(DocumentStore(os.path.join(synthetic_store, 'train')).documents())[:10]
  for i, d in enumerate(docs):
    neighbours = [docs[(i + 1) % 10], docs[(i + 2) % 10]]
    d.neighbour_ids = tuple(n.id for n in neighbours)
    d.neighbour_text_ids = tuple(n.text_ids for n in neighbours)
    d.neighbour_image_codes = tuple(n.image_codes for n in neighbours)
  split_dir = tmp_path / 'retrieved' / 'train'
  data_helpers.write_split_like(split_dir, docs, os.path.join(synthetic_store, 'train'))
  tasks.register_store_task('test_retrieved', str(tmp_path / 'retrieved'))
  vocab = DocumentStore(str(split_dir)).vocabulary()
  key = lambda d: (d.text, tuple(d.image_codes.tolist()))
  want = {key(d): [key(docs[(i + 1) % 10]), key(docs[(i + 2) % 10]), key(d)]
          for i, d in enumerate(docs)}
  got = list(decoded_documents(batches('test_retrieved'), vocab))
  assert len(got) == 10 and all(documents == want[documents[-1]] for documents in got)


def test_coco_mock_data_through_preprocessing_and_the_task(tmp_path, tokenizers):
  store_dir = tmp_path / 'coco'
  with tfds.testing.mock_data(num_examples=6):
    config = data_helpers.preprocess_config(store_dir / 'train', *tokenizers)
    preprocess.run(CocoCaptionsSource('train'), config)
  tasks.register_store_task('test_coco', str(store_dir))
  vocab = DocumentStore(str(store_dir / 'train')).vocabulary()
  got = collections.Counter(documents[-1] for documents in
                            decoded_documents(batches('test_coco'), vocab))
  assert sum(got.values()) > 6 and got == stored(str(store_dir))


@pytest.mark.slow
def test_preprocess_tool_on_2000_pairs_same_store_with_two_workers(tmp_path, tokenizers):
  common = ['tools/preprocess.py', '--source=synthetic', '--num_examples=2000',
            f'--text_vocabulary={tokenizers[0]}', f'--image_tokenizer={tokenizers[1]}']
  run_tool(common + [f'--output_dir={tmp_path / "one"}'])
  run_tool(common + [f'--output_dir={tmp_path / "two"}', '--direct_num_workers=2',
                      '--direct_running_mode=multi_processing'])
  one, two = tmp_path / 'one' / 'train', tmp_path / 'two' / 'train'
  assert sorted(os.listdir(one)) == sorted(os.listdir(two))
  # The tool's default 4 shards (the store layout's names), and all else it writes, byte for byte.
  assert sorted(n for n in os.listdir(one) if n.endswith('.tfrecord')) == [
      f'documents-{i:05d}-of-00004.tfrecord' for i in range(4)]
  for name in os.listdir(one):
    assert (one / name).read_bytes() == (two / name).read_bytes(), name
  assert DocumentStore(str(one)).num_documents == 2000
  tasks.register_store_task('test_2000', str(tmp_path / 'one'))
  vocab = DocumentStore(str(one)).vocabulary()
  got = collections.Counter(documents[-1] for documents in
                            decoded_documents(batches('test_2000'), vocab))
  assert got == stored(str(tmp_path / 'one'))
  captions = collections.Counter(r.texts[0] for r in SyntheticSource(2000).read(0, 2000))
  assert collections.Counter(text for text, _ in got.elements()) == captions


@pytest.mark.slow
def test_seqio_beam_cache_gives_the_same_batches(synthetic_store, tmp_path):
  data_dir = os.path.dirname(synthetic_store)
  env = dict(os.environ, CM3LEON_DATA_DIR=data_dir, PYTHONPATH=ROOT)
  cache_dir = tmp_path / 'cache'
  run_tool(['-m', 'seqio.scripts.cache_tasks_main', '--module_import=tasks',
             '--tasks=cm3leon_synthetic', f'--output_cache_dir={cache_dir}',
             '--pipeline_options=--runner=FnApiRunner'], env=env)
  tasks.register_standard_tasks(data_dir)
  seqio.add_global_cache_dirs([str(cache_dir)])
  cached = batches('cm3leon_synthetic', use_cached=True)
  vocab = DocumentStore(os.path.join(synthetic_store, 'train')).vocabulary()
  got = collections.Counter(documents[-1] for documents in decoded_documents(cached, vocab))
  assert got == stored(synthetic_store)
