"""The Beam stages of retrieval: embed a store and build its memory index; give every document of a
store its neighbours and write the result as a new store version.

  build:     store shards -> read -> batch -> CLIP document embeddings (one encoder per worker)
               -> all rows -> ScaNN / brute-force index, saved in index_dir
  retrieve:  query store shards -> read -> batch -> query dropout + embed + search + select
               (encoder and index loaded once per worker) -> join the neighbours' tokens from the
               bank's store -> group by shard -> sorted TFRecord shards + manifest.json

Every step is deterministic per document (query dropout is seeded by the run's seed and the
document id; embeddings come from fixed-size batches), so the neighbours and the written store do
not depend on the runner or the number of workers. Building the index is one step on one worker:
ScaNN trains and serializes on one machine.
"""

import dataclasses
import hashlib
import json
import os
import zlib
from typing import Any, Dict, Iterable, List, Optional, Tuple

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
import numpy as np
import tensorflow as tf

from cm3leon_jax.data import store as store_lib
from cm3leon_jax.data.beam import WriteShard, local_runner_by_default
from cm3leon_jax.retrieval import files
from cm3leon_jax.tokenizers.document_encoder import DocumentEncoder, EncoderInfo, encoder_info
from cm3leon_jax.retrieval.index import IndexConfig, MemoryIndex, RetrievalError
from cm3leon_jax.retrieval.select import SelectionConfig, select_neighbours

COUNTER_NAMESPACE = 'cm3leon_retrieval'


def content_fingerprint(text_ids, image_codes) -> int:
  """A 63-bit digest of a document's tokens: equal for documents with the same content."""
  digest = hashlib.blake2b(digest_size=8)
  digest.update(np.asarray(text_ids, np.int32).tobytes())
  digest.update(b'|')
  digest.update(np.asarray(image_codes, np.int32).tobytes())
  return int.from_bytes(digest.digest(), 'little') >> 1


def dropout_seed(seed: int, document_id: str) -> int:
  """The query-dropout seed of one document: fixed by the run's seed and the id, not the worker."""
  return zlib.crc32(f'{seed}:{document_id}'.encode())


class ReadShard(beam.DoFn):
  """Reads every document of one store shard file."""

  def process(self, path: str) -> Iterable[store_lib.Document]:
    yield from store_lib.read_shard(path)


def _documents(root: beam.Pipeline, label: str, store: store_lib.DocumentStore):
  return (root
          | f'{label}Files' >> beam.Create(store.files())
          | f'{label}Read' >> beam.ParDo(ReadShard())
          | f'{label}Reshuffle' >> beam.Reshuffle())


def _batches(documents, label: str, batch_size: int):
  return documents | f'{label}Batch' >> beam.BatchElements(min_batch_size=batch_size,
                                                          max_batch_size=batch_size)


def check_store_embeddings(store: store_lib.DocumentStore, encoder: EncoderInfo) -> None:
  """Raise RetrievalError unless the store holds CLIP image embeddings from `encoder`."""
  clip = store.manifest.get('clip')
  if not clip:
    raise RetrievalError(f'{store.directory} holds no CLIP image embeddings; preprocess it with '
                         'tools/preprocess.py --clip=<the CLIP folder> first.')
  if EncoderInfo(**clip['encoder']) != encoder:
    raise RetrievalError(f'{store.directory} holds image embeddings of {clip["encoder"]}, but the '
                         f'retriever is {encoder}; use the same CLIP for preprocessing and '
                         'retrieval.')
  if not store.num_documents:
    raise RetrievalError(f'{store.directory} is an empty store (0 documents); nothing to index.')


# ----------------------------------------------------------------------------- build the index

@dataclasses.dataclass(frozen=True)
class BuildConfig:
  """What `build_index` embeds and where it writes.

  Attributes:
    store_dir: the store split whose documents make the memory bank.
    clip: the CLIP folder (the same that preprocessed the store).
    index_dir: where the index goes (default: ``<store_dir>/index``).
    index: the index's method and ScaNN settings (the encoder is filled in).
    batch_size: documents per CLIP call.
  """

  store_dir: str
  clip: str
  index_dir: Optional[str] = None
  index: IndexConfig = IndexConfig()
  batch_size: int = 64

  @property
  def resolved_index_dir(self) -> str:
    return self.index_dir or os.path.join(self.store_dir, 'index')


@dataclasses.dataclass
class Candidate:
  """One memory-bank document: what selection needs besides its id."""

  sort_key: Tuple[int, int]
  id: str
  embedding: np.ndarray
  fingerprint: int
  has_both: bool


class EmbedDocuments(beam.DoFn):
  """CLIP document embeddings of a batch of store documents (full text, no dropout)."""

  def __init__(self, clip: str, batch_size: int):
    self._clip, self._batch_size = clip, batch_size

  def setup(self):
    self._encoder = DocumentEncoder(self._clip, self._batch_size)

  def process(self, batch: List[store_lib.Document]) -> Iterable[Candidate]:
    embeddings = self._encoder.documents([d.text for d in batch],
                                         [d.clip_image_embedding for d in batch])
    beam.metrics.Metrics.counter(COUNTER_NAMESPACE, 'documents_embedded').inc(len(batch))
    for doc, embedding in zip(batch, embeddings):
      yield Candidate(doc.sort_key, doc.id, embedding,
                      content_fingerprint(doc.text_ids, doc.image_codes),
                      bool(doc.text_ids.size and doc.image_codes.size))


def _build_and_save(candidates: List[Candidate], config: BuildConfig, encoder: EncoderInfo,
                    store_dir: str) -> str:
  """Index the candidates (in store order) and save index, bank table and metadata."""
  candidates = sorted(candidates, key=lambda c: c.sort_key)
  index_config = dataclasses.replace(config.index, encoder=encoder)
  index = MemoryIndex.build(np.stack([c.embedding for c in candidates]),
                            [c.id for c in candidates], index_config)
  bank = files.BankTable([c.fingerprint for c in candidates], [c.has_both for c in candidates])
  metadata = {'store_dir': os.path.abspath(store_dir), 'clip': os.path.abspath(config.clip),
              'method': index.method, 'num_documents': len(candidates)}
  files.save_index(config.resolved_index_dir, index, bank, metadata)
  return config.resolved_index_dir


def build_index(root: beam.Pipeline, config: BuildConfig) -> None:
  """Add the embed-and-index stages to `root`."""
  store = store_lib.DocumentStore(config.store_dir)
  encoder = encoder_info(config.clip)
  check_store_embeddings(store, encoder)
  _ = (_batches(_documents(root, 'Bank', store), 'Bank', config.batch_size)
       | 'Embed' >> beam.ParDo(EmbedDocuments(config.clip, config.batch_size))
       | 'AllRows' >> beam.combiners.ToList()
       | 'BuildIndex' >> beam.Map(_build_and_save, config, encoder, config.store_dir))


# ----------------------------------------------------------------------------- retrieve

@dataclasses.dataclass(frozen=True)
class RetrieveConfig:
  """What `retrieve` reads and writes.

  Attributes:
    store_dir: the store split whose documents get neighbours (the queries).
    index_dir: a memory index from `build_index` (its bank may be another split's store).
    output_dir: the new store version's split folder.
    selection: k, the near-copy threshold, query dropout and the modality preference.
    seed: the query-dropout seed of this run.
    search_candidates: candidates searched per query besides k, for the rules to choose from.
    batch_size: documents per CLIP call and per search.
  """

  store_dir: str
  index_dir: str
  output_dir: str
  selection: SelectionConfig = SelectionConfig()
  seed: int = 0
  search_candidates: int = 16
  batch_size: int = 64


class FindNeighbours(beam.DoFn):
  """Embeds queries (with dropout), searches the index and selects up to k neighbour ids."""

  def __init__(self, config: RetrieveConfig, clip: str):
    self._config, self._clip = config, clip

  def setup(self):
    self._encoder = DocumentEncoder(self._clip, self._config.batch_size)
    self._index, self._bank = files.load_index(self._config.index_dir, self._encoder.info)

  def process(self, batch: List[store_lib.Document]):
    config = self._config
    embeddings = self._encoder.documents(
        [d.text for d in batch], [d.clip_image_embedding for d in batch],
        config.selection.query_dropout, [dropout_seed(config.seed, d.id) for d in batch])
    ids, scores = self._index.search(embeddings, config.selection.k + config.search_candidates)
    for doc, row_ids, row_scores in zip(batch, ids, scores):
      own = content_fingerprint(doc.text_ids, doc.image_codes)
      fingerprint = lambda i, doc=doc, own=own: own if i == doc.id else self._bank.fingerprint(i)
      chosen = select_neighbours(doc.id, row_ids, row_scores, self._bank.has_both, fingerprint,
                                 config.selection)
      beam.metrics.Metrics.counter(COUNTER_NAMESPACE, f'with_{len(chosen)}_neighbours').inc()
      yield doc, chosen


def _requests(pair) -> Iterable[Tuple[str, Tuple[str, int]]]:
  doc, chosen = pair
  return [(neighbour, (doc.id, rank)) for rank, neighbour in enumerate(chosen)]


def _answer(joined) -> Iterable[Tuple[str, Tuple[int, str, Tuple[np.ndarray, np.ndarray]]]]:
  neighbour, groups = joined
  if groups['request'] and not groups['bank']:
    raise RetrievalError(f'The index returned {neighbour!r}, which its store does not hold; '
                         'rebuild the index from the current store.')
  for query, rank in groups['request']:
    yield query, (rank, neighbour, groups['bank'][0])


def _attach(joined) -> store_lib.Document:
  _, groups = joined
  doc = groups['doc'][0]
  neighbours = sorted(groups['neighbours'])
  return dataclasses.replace(
      doc, neighbour_ids=tuple(n for _, n, _ in neighbours),
      neighbour_text_ids=tuple(tokens[0] for _, _, tokens in neighbours),
      neighbour_image_codes=tuple(tokens[1] for _, _, tokens in neighbours))


def _write_manifest(_, shards, counts, manifest: Dict[str, Any], output_dir: str) -> str:
  shards = sorted(shards)
  histogram = {str(n): c for n, c in sorted(counts)}
  manifest = dict(manifest, num_documents=sum(n for _, n in shards),
                  shards=[{'file': name, 'num_documents': n} for name, n in shards])
  manifest['retrieval'] = dict(manifest['retrieval'], documents_by_neighbour_count=histogram)
  with tf.io.gfile.GFile(os.path.join(output_dir, store_lib.MANIFEST), 'w') as f:
    json.dump(manifest, f, indent=2, sort_keys=True)
  return output_dir


def _output_manifest(store: store_lib.DocumentStore, config: RetrieveConfig,
                     metadata: Dict[str, Any]) -> Dict[str, Any]:
  retrieval = {'index_dir': os.path.abspath(config.index_dir), 'bank_store': metadata['store_dir'],
               'query_store': os.path.abspath(config.store_dir), 'seed': config.seed,
               'search_candidates': config.search_candidates,
               'selection': dataclasses.asdict(config.selection)}
  return dict(store.manifest, retrieval=retrieval)


def retrieve(root: beam.Pipeline, config: RetrieveConfig) -> None:
  """Add the find-join-write stages to `root`."""
  store = store_lib.DocumentStore(config.store_dir)
  metadata = files.read_metadata(config.index_dir)
  encoder = encoder_info(metadata['clip'])
  check_store_embeddings(store, encoder)
  bank_store = store_lib.DocumentStore(metadata['store_dir'])
  pairs = (_batches(_documents(root, 'Query', store), 'Query', config.batch_size)
           | 'FindNeighbours' >> beam.ParDo(FindNeighbours(config, metadata['clip'])))
  bank = (_documents(root, 'Bank', bank_store)
          | 'BankTokens' >> beam.Map(lambda d: (d.id, (d.text_ids, d.image_codes))))
  answers = ({'request': pairs | 'Requests' >> beam.FlatMap(_requests), 'bank': bank}
             | 'JoinBank' >> beam.CoGroupByKey()
             | 'Answers' >> beam.FlatMap(_answer))
  queries = pairs | 'KeyQueries' >> beam.Map(lambda pair: (pair[0].id, pair[0]))
  num_records, num_shards = store.manifest['num_records_read'], len(store.manifest['shards'])
  shards = ({'doc': queries, 'neighbours': answers}
            | 'JoinQueries' >> beam.CoGroupByKey()
            | 'Attach' >> beam.Map(_attach)
            | 'KeyByShard' >> beam.Map(
                lambda d: (store_lib.shard_of(d.index, num_records, num_shards), d))
            | 'GroupByShard' >> beam.GroupByKey()
            | 'WriteShards' >> beam.ParDo(WriteShard(config.output_dir, num_shards)))
  counts = (pairs
            | 'NeighbourCounts' >> beam.Map(lambda pair: len(pair[1]))
            | 'CountByNeighbours' >> beam.combiners.Count.PerElement())
  _ = (root
       | 'ManifestTrigger' >> beam.Create([None])
       | 'WriteManifest' >> beam.Map(_write_manifest, beam.pvalue.AsList(shards),
                                     beam.pvalue.AsList(counts),
                                     _output_manifest(store, config, metadata), config.output_dir))


# ----------------------------------------------------------------------------- running

def run_build(config: BuildConfig, options: Optional[PipelineOptions] = None) -> str:
  """Embed the store and build its index; returns the index folder."""
  with beam.Pipeline(options=local_runner_by_default(options)) as root:
    build_index(root, config)
  return config.resolved_index_dir


def run_retrieve(config: RetrieveConfig, options: Optional[PipelineOptions] = None) -> str:
  """Write the store with neighbours to config.output_dir; returns that folder."""
  if os.path.abspath(config.output_dir) == os.path.abspath(config.store_dir):
    raise RetrievalError('retrieve writes a new store version: output_dir must differ from '
                         f'store_dir ({config.store_dir}).')
  store = store_lib.DocumentStore(config.store_dir)
  vocabulary_file = store.manifest['vocabulary']['text_vocabulary']
  tf.io.gfile.makedirs(config.output_dir)
  tf.io.gfile.copy(os.path.join(config.store_dir, vocabulary_file),
                   os.path.join(config.output_dir, vocabulary_file), overwrite=True)
  with beam.Pipeline(options=local_runner_by_default(options)) as root:
    retrieve(root, config)
  return config.output_dir
