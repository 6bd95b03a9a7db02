"""The retrieval stages end to end: preprocess with CLIP, build the index, retrieve, train batches.

A tiny CLIP trained for a few steps embeds every document almost alike (cosines near 1), so these
tests retrieve with max_score=1.0; the threshold itself is tested in test_retrieval_select.py.
"""

import dataclasses
import json
import os
import shutil

import numpy as np
import pytest

import data_helpers
from data_helpers import batches, decoded_documents
from helpers import run_tool
from cm3leon_jax.data import preprocess
from cm3leon_jax.data.assembly import TokenLayout
from cm3leon_jax.data.sources import SyntheticSource
from cm3leon_jax.data.store import DocumentStore
from cm3leon_jax.models.clip import document_embedding
from cm3leon_jax.retrieval import files, pipeline
from cm3leon_jax.tokenizers.document_encoder import DocumentEncoder, encoder_info
from cm3leon_jax.retrieval.index import RetrievalError
from cm3leon_jax.retrieval.retriever import Retriever
from cm3leon_jax.retrieval.select import SelectionConfig
import tasks
from cm3leon_jax.cli import train_clip

SELECTION = SelectionConfig(k=2, max_score=1.0)


def tiny_clip(directory) -> str:
  """A CLIP trained for 20 steps, saved in `directory` (returned)."""
  train_clip.train(str(directory), steps=20, batch_size=16, learning_rate=3e-3, warmup_steps=2,
                   pool_size=128, patch_size=8, width=32, layers=1, projection_dim=16,
                   max_length=20, log_every=20, eval_examples=16)
  return str(directory)


@pytest.fixture(scope='module')
def built(tmp_path_factory, shared_tokenizers):
  """Stores (train 120, validation 30) preprocessed with a CLIP, the train index, and both
  splits retrieved with one worker."""
  root = tmp_path_factory.mktemp('retrieval')
  vocabulary, tokenizer = shared_tokenizers
  clip = tiny_clip(root / 'clip')
  for split, count in (('train', 120), ('validation', 30)):
    config = data_helpers.preprocess_config(root / 'store' / split, vocabulary, tokenizer,
                                            clip=clip)
    preprocess.run(SyntheticSource(count, split), config)
  index_dir = pipeline.run_build(pipeline.BuildConfig(str(root / 'store' / 'train'), clip,
                                                      batch_size=16))
  for split in ('train', 'validation'):
    pipeline.run_retrieve(pipeline.RetrieveConfig(
        str(root / 'store' / split), index_dir, str(root / 'retrieved' / split), SELECTION,
        batch_size=16))
  return {'root': root, 'clip': clip, 'index': index_dir, 'tokenizers': (vocabulary, tokenizer)}


def documents(root, *parts):
  return list(DocumentStore(os.path.join(root, *parts)).documents())


def test_every_document_gets_k_valid_neighbours_with_their_tokens(built):
  bank = {d.id: d for d in documents(built['root'], 'store', 'train')}
  for split in ('train', 'validation'):
    retrieved = documents(built['root'], 'retrieved', split)
    originals = documents(built['root'], 'store', split)
    assert len(originals) == {'train': 120, 'validation': 30}[split]
    assert [d.id for d in retrieved] == [d.id for d in originals]
    for doc in retrieved:
      assert len(doc.neighbour_ids) == 2 and len(set(doc.neighbour_ids)) == 2
      assert doc.id not in doc.neighbour_ids and all(i in bank for i in doc.neighbour_ids)
      for i, text, image in zip(doc.neighbour_ids, doc.neighbour_text_ids,
                                doc.neighbour_image_codes):
        np.testing.assert_array_equal(text, bank[i].text_ids)
        np.testing.assert_array_equal(image, bank[i].image_codes)
  manifest = DocumentStore(os.path.join(built['root'], 'retrieved', 'train')).manifest
  assert manifest['retrieval']['documents_by_neighbour_count'] == {'2': 120}
  assert manifest['retrieval']['selection'] == dataclasses.asdict(SELECTION)


def test_training_batches_carry_the_neighbours_before_the_query(built):
  tasks.register_store_task('test_retrieval_e2e', str(built['root'] / 'retrieved'))
  retrieved = documents(built['root'], 'retrieved', 'train')
  vocab = DocumentStore(os.path.join(built['root'], 'retrieved', 'train')).vocabulary()
  key = lambda text_ids, codes: (vocab.decode(text_ids.tolist()), tuple(codes.tolist()))
  want = {key(d.text_ids, d.image_codes): [key(t, c) for t, c in zip(d.neighbour_text_ids,
                                                                   d.neighbour_image_codes)]
          for d in retrieved}
  examples = list(decoded_documents(batches('test_retrieval_e2e'), vocab))
  assert len(examples) == 120
  for example in examples:  # Neighbours first, most relevant first, then the query.
    assert example[:-1] == want[example[-1]]


@pytest.mark.slow
def test_tools_with_two_workers_give_the_same_neighbours(built, tmp_path):
  store = str(built['root'] / 'store' / 'train')
  two_workers = ['--direct_num_workers=2', '--direct_running_mode=multi_processing']
  run_tool(['tools/build_index.py', f'--store_dir={store}', f'--clip={built["clip"]}',
            f'--index_dir={tmp_path / "index"}', '--batch_size=16'] + two_workers)
  run_tool(['tools/retrieve.py', f'--store_dir={store}', f'--index_dir={tmp_path / "index"}',
            f'--output_dir={tmp_path / "train"}', '--max_score=1.0', '--batch_size=16']
           + two_workers)
  one = documents(built['root'], 'retrieved', 'train')
  two = list(DocumentStore(str(tmp_path / 'train')).documents())
  assert [(d.id, d.neighbour_ids) for d in one] == [(d.id, d.neighbour_ids) for d in two]
  # The shards are byte-identical too: as many as the input store has (preprocess_config's 2).
  num_shards = len(DocumentStore(store).manifest['shards'])
  shards = [f'documents-{i:05d}-of-{num_shards:05d}.tfrecord' for i in range(num_shards)]
  assert num_shards == 2
  for directory in (tmp_path / 'train', built['root'] / 'retrieved' / 'train'):
    assert sorted(n for n in os.listdir(directory) if n.endswith('.tfrecord')) == shards
  for name in shards:
    assert (tmp_path / 'train' / name).read_bytes() == (
        built['root'] / 'retrieved' / 'train' / name).read_bytes()
  ids_one = json.loads(open(os.path.join(built['index'], 'ids.json')).read())
  assert ids_one == json.loads((tmp_path / 'index' / 'ids.json').read_text())


def test_other_seed_other_query_dropout(built, tmp_path):
  store = str(built['root'] / 'store' / 'validation')
  config = pipeline.RetrieveConfig(store, built['index'], str(tmp_path / 'seed1'), SELECTION,
                                   seed=1, batch_size=16)
  pipeline.run_retrieve(config)
  seed0 = [d.neighbour_ids for d in documents(built['root'], 'retrieved', 'validation')]
  seed1 = [d.neighbour_ids for d in DocumentStore(str(tmp_path / 'seed1')).documents()]
  assert seed0 != seed1 and sum(a == b for a, b in zip(seed0, seed1)) > 0


def test_retriever_at_inference(built):
  retriever = Retriever(built['index'], SELECTION)
  bank = documents(built['root'], 'store', 'train')
  images = [None, np.full((32, 32, 3), 200, np.uint8)]  # A text prompt and an image prompt.
  found = retriever.retrieve(texts=[bank[0].text, None], images=images)
  assert [len(row) for row in found] == [2, 2]
  assert retriever.neighbour_ids(texts=[bank[0].text, None], images=images) == [
      [d.id for d in row] for row in found]  # No query dropout: the same every time.
  vocab = DocumentStore(os.path.join(built['root'], 'store', 'train')).vocabulary()
  layout = TokenLayout.from_vocabulary(vocab)
  prefix = retriever.prefix_tokens(found[0], layout)
  first = found[0][0]
  expected_first = np.concatenate([first.text_ids, [vocab.break_id],
                                   vocab.image_ids(first.image_codes), [vocab.eos_id]])
  np.testing.assert_array_equal(prefix[:len(expected_first)], expected_first)
  assert (prefix == vocab.eos_id).sum() == 2 and prefix[-1] == vocab.eos_id
  with pytest.raises(ValueError, match='2 texts but 1 images'):
    retriever.neighbour_ids(texts=['a', 'b'], images=[None])


def test_document_embedding_and_query_dropout(built):
  encoder = DocumentEncoder(built['clip'], batch_size=4)
  texts = ['a large red circle at the top left', 'a small blue square']
  image = encoder.embed_images([np.zeros((32, 32, 3), np.uint8)])[0]
  got = encoder.documents(texts, [image, None])
  text = encoder.embed_texts(texts)
  want = np.stack([document_embedding(text[0], image), document_embedding(text[1], None)])
  np.testing.assert_allclose(got, want / np.linalg.norm(want, axis=1, keepdims=True), atol=1e-6)
  ids, mask = encoder.tokenizer(texts[:1])
  dropped_ids, dropped_mask = encoder._drop_tokens(ids, mask, 0.5, [3])
  kept = dropped_ids[0, :dropped_mask[0].sum()]
  inner = int(mask[0].sum()) - 2
  assert kept[0] == ids[0, 0] and kept[-1] == ids[0, mask[0].sum() - 1]
  assert len(kept) == 2 + inner - round(0.5 * inner)
  with pytest.raises(ValueError, match='neither text nor an image'):
    encoder.documents([None], [None])


def test_clear_errors(built, tmp_path):
  vocabulary, tokenizer = built['tokenizers']
  plain = tmp_path / 'plain' / 'train'
  preprocess.run(SyntheticSource(8, 'train'),
                 data_helpers.preprocess_config(plain, vocabulary, tokenizer))
  with pytest.raises(RetrievalError, match='no CLIP image embeddings.*--clip'):
    pipeline.run_build(pipeline.BuildConfig(str(plain), built['clip']))

  other = str(tmp_path / 'other_clip')  # Another encoder: same weights, another config file.
  shutil.copytree(built['clip'], other)
  config = json.loads((tmp_path / 'other_clip' / 'config.json').read_text())
  (tmp_path / 'other_clip' / 'config.json').write_text(json.dumps(dict(config, note='retrained')))
  store = str(built['root'] / 'store' / 'train')
  with pytest.raises(RetrievalError, match='use the same CLIP'):
    pipeline.run_build(pipeline.BuildConfig(store, other))
  with pytest.raises(RetrievalError, match='Encoder mismatch'):
    files.load_index(built['index'], encoder_info(other))

  empty = tmp_path / 'empty' / 'train'
  shutil.copytree(store, empty, ignore=shutil.ignore_patterns('documents-*', 'index'))
  manifest = json.loads((empty / 'manifest.json').read_text())
  (empty / 'manifest.json').write_text(json.dumps(dict(manifest, num_documents=0, shards=[])))
  with pytest.raises(RetrievalError, match='empty store'):
    pipeline.run_build(pipeline.BuildConfig(str(empty), built['clip']))

  with pytest.raises(RetrievalError, match='not a retrieval index folder'):
    Retriever(str(tmp_path))
  with pytest.raises(RetrievalError, match='output_dir must differ'):
    pipeline.run_retrieve(pipeline.RetrieveConfig(store, built['index'], store))
