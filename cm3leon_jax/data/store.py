"""The document store: tokenized documents in sharded TFRecord files plus a JSON manifest.

A store is one folder per split::

  <store>/<split>/documents-00000-of-00004.tfrecord   one tf.train.Example per document
  <store>/<split>/manifest.json                      counts, vocabulary, tokenizer, shards
  <store>/<split>/bad_records.jsonl                  every skipped record: id, reason, message
  <store>/<split>/text_vocabulary.model              the text vocabulary, copied in

A document keeps its text and image apart (``text_ids``, ``image_codes``) so that the order
(text first or image first) is chosen when training examples are assembled. Image codes are the
tokenizer's raw codes, not vocabulary ids. Records within a shard are sorted by (source index,
caption index), and a document's shard depends only on its source index, so a store's bytes do not
depend on how many workers wrote it. Preprocessing with a CLIP adds each image's CLIP embedding
(``clip_image_embedding``), and the retrieval stage adds neighbours (their ids and tokens, ragged
lists stored flat with their lengths) to each record; until then those features are empty.

An instruction document (supervised fine-tuning: an edit pair, a control image and its target, a
question about an image) holds several texts and images in order instead: its ``parts``, each a
text's ids or an image's raw codes, with whether it is the task's output and whether a text
continues the previous one without a <break> (``data.sft_templates``). Stores of format 1, written
before parts existed, read as documents without parts.
"""

import dataclasses
import json
import os
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import seqio
import tensorflow as tf

from cm3leon_jax.tokenizers.text import TokenizersVocabulary
from cm3leon_jax.tokenizers.multimodal import MultimodalVocabulary

MANIFEST = 'manifest.json'
BAD_RECORDS = 'bad_records.jsonl'
FORMAT_VERSION = 2
READABLE_FORMAT_VERSIONS = (1, 2)
TEXT_PART, IMAGE_PART = 0, 1


class StoreError(ValueError):
  """A folder that is not a readable document store; the message names the folder and the fix."""


@dataclasses.dataclass(frozen=True)
class DocumentPart:
  """One text (its ids) or image (its raw codes) of an instruction document."""

  kind: int  # TEXT_PART or IMAGE_PART.
  ids: np.ndarray
  output: bool = False
  joined: bool = False  # A text continuing the previous text part, with no <break> between.


@dataclasses.dataclass
class Document:
  """One caption-image document, or an instruction document of several parts, as the store
  holds it."""

  id: str
  index: int
  caption_index: int
  text: str
  text_ids: np.ndarray
  image_codes: np.ndarray
  metadata: Dict[str, Any] = dataclasses.field(default_factory=dict)
  neighbour_ids: Tuple[str, ...] = ()
  neighbour_text_ids: Tuple[np.ndarray, ...] = ()
  neighbour_image_codes: Tuple[np.ndarray, ...] = ()
  clip_image_embedding: Optional[np.ndarray] = None  # Unit-norm float32 [dim], for retrieval.
  parts: Tuple[DocumentPart, ...] = ()

  @property
  def sort_key(self) -> Tuple[int, int]:
    return self.index, self.caption_index


def _int_feature(values) -> tf.train.Feature:
  return tf.train.Feature(int64_list=tf.train.Int64List(value=np.asarray(values, np.int64).ravel()))


def _float_feature(values) -> tf.train.Feature:
  values = np.asarray(values, np.float32).ravel()
  return tf.train.Feature(float_list=tf.train.FloatList(value=values))


def _bytes_feature(values: Sequence[str]) -> tf.train.Feature:
  return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v.encode('utf-8') for v in values]))


def _ragged(arrays: Sequence[np.ndarray]) -> Tuple[np.ndarray, List[int]]:
  lengths = [int(np.size(a)) for a in arrays]
  flat = np.concatenate([np.ravel(a) for a in arrays]) if arrays else np.zeros(0, np.int64)
  return flat, lengths


def to_example_bytes(doc: Document) -> bytes:
  """The serialized tf.train.Example of a document."""
  neighbour_text, neighbour_text_lengths = _ragged(doc.neighbour_text_ids)
  neighbour_image, neighbour_image_lengths = _ragged(doc.neighbour_image_codes)
  part_ids, part_lengths = _ragged([part.ids for part in doc.parts])
  features = {
      'id': _bytes_feature([doc.id]),
      'index': _int_feature([doc.index]),
      'caption_index': _int_feature([doc.caption_index]),
      'text': _bytes_feature([doc.text]),
      'text_ids': _int_feature(doc.text_ids),
      'image_codes': _int_feature(doc.image_codes),
      'metadata': _bytes_feature([json.dumps(doc.metadata, sort_keys=True)]),
      'neighbour_ids': _bytes_feature(doc.neighbour_ids),
      'neighbour_text_ids': _int_feature(neighbour_text),
      'neighbour_text_lengths': _int_feature(neighbour_text_lengths),
      'neighbour_image_codes': _int_feature(neighbour_image),
      'neighbour_image_lengths': _int_feature(neighbour_image_lengths),
      'clip_image_embedding': _float_feature(
          () if doc.clip_image_embedding is None else doc.clip_image_embedding),
      'part_kinds': _int_feature([part.kind for part in doc.parts]),
      'part_outputs': _int_feature([part.output for part in doc.parts]),
      'part_joined': _int_feature([part.joined for part in doc.parts]),
      'part_ids': _int_feature(part_ids),
      'part_lengths': _int_feature(part_lengths),
  }
  # Deterministic: protobuf map order would otherwise differ between processes.
  example = tf.train.Example(features=tf.train.Features(feature=features))
  return example.SerializeToString(deterministic=True)


def _split(flat: np.ndarray, lengths: Sequence[int]) -> Tuple[np.ndarray, ...]:
  return tuple(np.split(flat, np.cumsum(lengths)[:-1])) if len(lengths) else ()


def from_example_bytes(data: bytes) -> Document:
  """The document of a serialized tf.train.Example (the inverse of `to_example_bytes`)."""
  feature = tf.train.Example.FromString(data).features.feature
  ints = lambda key: np.asarray(feature[key].int64_list.value, np.int32)
  strings = lambda key: tuple(v.decode('utf-8') for v in feature[key].bytes_list.value)
  clip = feature['clip_image_embedding'].float_list.value
  # Records of format 1 have no part features: reading them gives empty lists, so no parts.
  parts = tuple(
      DocumentPart(int(kind), ids, bool(output), bool(joined)) for kind, ids, output, joined in zip(
          ints('part_kinds'), _split(ints('part_ids'), ints('part_lengths')),
          ints('part_outputs'), ints('part_joined')))
  return Document(
      id=strings('id')[0], index=int(ints('index')[0]), caption_index=int(ints('caption_index')[0]),
      text=strings('text')[0], text_ids=ints('text_ids'), image_codes=ints('image_codes'),
      metadata=json.loads(strings('metadata')[0]), neighbour_ids=strings('neighbour_ids'),
      neighbour_text_ids=_split(ints('neighbour_text_ids'), ints('neighbour_text_lengths')),
      neighbour_image_codes=_split(ints('neighbour_image_codes'), ints('neighbour_image_lengths')),
      clip_image_embedding=np.asarray(clip, np.float32) if clip else None, parts=parts)


def feature_description() -> Dict[str, Any]:
  """tf.io parsing spec of the token features the training pipeline reads (seqio's source)."""
  ragged = lambda: tf.io.FixedLenSequenceFeature([], tf.int64, allow_missing=True)
  return {'id': tf.io.FixedLenFeature([], tf.string),
          'text_ids': ragged(), 'image_codes': ragged(),
          'neighbour_text_ids': ragged(), 'neighbour_text_lengths': ragged(),
          'neighbour_image_codes': ragged(), 'neighbour_image_lengths': ragged(),
          'part_kinds': ragged(), 'part_outputs': ragged(), 'part_joined': ragged(),
          'part_ids': ragged(), 'part_lengths': ragged()}


def shard_name(shard: int, num_shards: int) -> str:
  return f'documents-{shard:05d}-of-{num_shards:05d}.tfrecord'


def shard_of(index: int, num_records: int, num_shards: int) -> int:
  """The shard of source record `index`: contiguous ranges, so the store keeps the source order."""
  return min(index * num_shards // max(num_records, 1), num_shards - 1)


def write_shard(directory: str, shard: int, num_shards: int, documents: Sequence[Document]) -> str:
  """Write one shard (sorted, atomically through a temporary file); returns its path."""
  path = os.path.join(directory, shard_name(shard, num_shards))
  tf.io.gfile.makedirs(directory)
  temporary = path + '.tmp'
  with tf.io.TFRecordWriter(temporary) as writer:
    for doc in sorted(documents, key=lambda d: d.sort_key):
      writer.write(to_example_bytes(doc))
  tf.io.gfile.rename(temporary, path, overwrite=True)
  return path


def read_shard(path: str) -> Iterator[Document]:
  """The documents of one shard file, in file order."""
  for record in tf.data.TFRecordDataset(path).as_numpy_iterator():
    yield from_example_bytes(record)


def text_vocabulary(path: str) -> seqio.Vocabulary:
  """A SentencePiece (.model) or `tokenizers` (.json) text vocabulary from its file."""
  if path.endswith('.json'):
    return TokenizersVocabulary(path)
  return seqio.SentencePieceVocabulary(path)


class DocumentStore:
  """One split of a store, opened through its manifest."""

  def __init__(self, directory: str):
    self.directory = os.fspath(directory)
    manifest_path = os.path.join(self.directory, MANIFEST)
    if not tf.io.gfile.exists(manifest_path):
      raise StoreError(f'{self.directory} is not a document store split: it has no {MANIFEST}. '
                       'Write one with tools/preprocess.py.')
    with tf.io.gfile.GFile(manifest_path) as f:
      self.manifest = json.load(f)
    if self.manifest.get('format_version') not in READABLE_FORMAT_VERSIONS:
      raise StoreError(f'{manifest_path}: format_version {self.manifest.get("format_version")} is '
                       f'not one this version reads {READABLE_FORMAT_VERSIONS}; preprocess the '
                       'data again.')

  @property
  def num_documents(self) -> int:
    return self.manifest['num_documents']

  @property
  def file_pattern(self) -> str:
    return os.path.join(self.directory, 'documents-*-of-*.tfrecord')

  def files(self) -> List[str]:
    return [os.path.join(self.directory, s['file']) for s in self.manifest['shards']]

  def vocabulary(self) -> MultimodalVocabulary:
    """The multimodal vocabulary the store's token ids belong to."""
    spec = self.manifest['vocabulary']
    text = text_vocabulary(os.path.join(self.directory, spec['text_vocabulary']))
    return MultimodalVocabulary(text, spec['num_image_codes'], spec['num_sentinels'])

  def documents(self) -> Iterator[Document]:
    """Every document, shard by shard, in store order."""
    for path in self.files():
      yield from read_shard(path)
