"""The Beam pipeline that turns raw image-caption pairs into a document store.

  ranges of the source -> read -> check and prepare (decode, resize/crop, tokenize text)
    -> batches -> VQ-GAN encode (jitted, one tokenizer per worker) -> one document per caption
    -> group by shard -> sorted TFRecord shards;  bad records -> bad_records.jsonl;  manifest.json

Heavy image work happens here once; training reads integer tokens only. Bad records (unreadable
line, no image, corrupt or tiny image, empty, non-UTF-8 or too long caption) never stop the run:
each is counted in a Beam counter named after its reason, logged with its id, written to
bad_records.jsonl and totalled in the manifest. A record with several captions loses only its bad
captions. The store's bytes do not depend on the runner or the number of workers (see store.py).
"""

import dataclasses
import json
import logging
import os
from typing import Any, Dict, Iterable, List, Optional, Tuple

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
import numpy as np
import tensorflow as tf

from cm3leon_jax.data import images as image_lib
from cm3leon_jax.data.beam import WriteShard, local_runner_by_default
from cm3leon_jax.data import store as store_lib
from cm3leon_jax.data.sources import RawRecord, read_ranges
from cm3leon_jax.interop import hf_clip
from cm3leon_jax.interop.checkpoint_files import read_config
from cm3leon_jax.models.clip_config import from_hf_config_dict
from cm3leon_jax.tokenizers import document_encoder as encoder_lib

COUNTER_NAMESPACE = 'cm3leon_preprocess'
BAD_REASONS = ('unreadable_record', 'no_image', 'bad_image', 'no_text', 'empty_text',
               'text_too_long', 'bad_template', 'image_size_mismatch', 'document_too_long')


@dataclasses.dataclass(frozen=True)
class PreprocessConfig:
  """What the pipeline writes and how it batches.

  Attributes:
    output_dir: the split's folder (``<store>/<split>``).
    text_vocabulary: the text vocabulary file (SentencePiece .model or tokenizers .json).
    image_tokenizer: an ImageTokenizer checkpoint folder.
    num_shards: TFRecord shards to write.
    batch_size: images per VQ-GAN call (a fixed shape, so one compilation per worker).
    captions_per_image: documents made per image (its first captions); 0 keeps every caption.
    max_text_tokens: captions longer than this many tokens are skipped as too long.
    min_image_side: images with a smaller side are skipped as too small.
    num_sentinels: CM3 sentinels in the store's vocabulary.
    num_read_ranges: how many pieces the source is split into for reading (parallelism).
    clip: a CLIP checkpoint folder; when given, each document also stores its image's CLIP
      embedding, which the retrieval stage (tools/build_index.py) needs.
    max_document_tokens: instruction documents longer than this (parts, <break>s and the final
      <eos>) are skipped as too long; set it to the training sequence length. None: no limit.
  """

  output_dir: str
  text_vocabulary: str
  image_tokenizer: str
  num_shards: int = 4
  batch_size: int = 32
  captions_per_image: int = 0
  max_text_tokens: int = 512
  min_image_side: int = image_lib.DEFAULT_MIN_SIDE
  num_sentinels: int = 256
  num_read_ranges: int = 16
  clip: Optional[str] = None
  max_document_tokens: Optional[int] = None

  def __post_init__(self):
    for name in ('num_shards', 'batch_size', 'max_text_tokens', 'num_read_ranges'):
      if getattr(self, name) < 1:
        raise ValueError(f'PreprocessConfig.{name} must be >= 1, got {getattr(self, name)}.')


@dataclasses.dataclass
class Prepared:
  """A record that passed the checks: pixels ready for the tokenizer, captions tokenized."""

  record: RawRecord
  pixels: np.ndarray
  clip_pixels: Optional[np.ndarray]  # The image through CLIP's own preprocessing, if configured.
  captions: List[Tuple[int, str, np.ndarray]]  # (caption index, text, text ids)


def bad_record(record_id: str, reason: str, message: str) -> beam.pvalue.TaggedOutput:
  """Count, log and emit one skipped record on the 'bad' output."""
  beam.metrics.Metrics.counter(COUNTER_NAMESPACE, reason).inc()
  logging.warning('Skipping %s (%s): %s', record_id, reason, message)
  return beam.pvalue.TaggedOutput('bad', {'id': record_id, 'reason': reason, 'message': message})


class ReadRange(beam.DoFn):
  """Reads records start .. stop - 1 of a source (RawRecords, or InstructionRecords)."""

  def __init__(self, source):
    self._source = source

  def process(self, bounds: Tuple[int, int]) -> Iterable[Any]:
    yield from self._source.read(*bounds)


class CheckAndPrepare(beam.DoFn):
  """Decodes and preprocesses the image and tokenizes each caption; bad ones go to 'bad'."""

  def __init__(self, config: PreprocessConfig, image_size: int):
    self._config, self._image_size = config, image_size

  def setup(self):
    self._text = store_lib.text_vocabulary(self._config.text_vocabulary)
    self._clip_config = None
    if self._config.clip:
      self._clip_config = from_hf_config_dict(read_config(self._config.clip))

  def process(self, record: RawRecord):
    if record.error:
      yield bad_record(record.id, 'unreadable_record', record.error)
      return
    if record.image is None:
      yield bad_record(record.id, 'no_image', 'the record has no image (text-only)')
      return
    try:
      image = self._load(record.image)
      pixels = image_lib.preprocess(image, self._image_size)
    except image_lib.ImageError as e:
      yield bad_record(record.id, 'bad_image', str(e))
      return
    captions = []
    for k, text in enumerate(self._captions(record)):
      caption_id = _caption_id(record, k)
      ids = np.asarray(self._text.encode(text), np.int32) if text.strip() else np.zeros(0, np.int32)
      if not ids.size:
        yield bad_record(caption_id, 'empty_text', 'the caption is empty')
      elif ids.size > self._config.max_text_tokens:
        yield bad_record(caption_id, 'text_too_long', f'{ids.size} text tokens, more than '
                         f'max_text_tokens={self._config.max_text_tokens}')
      else:
        captions.append((k, text, ids))
    if not record.texts:
      yield bad_record(record.id, 'no_text', 'the record has no caption')
    elif captions:
      clip_pixels = (hf_clip.preprocess_images([image], self._clip_config)[0]
                     if self._clip_config else None)
      yield Prepared(record, pixels, clip_pixels, captions)

  def _captions(self, record: RawRecord) -> Tuple[str, ...]:
    keep = self._config.captions_per_image
    return record.texts[:keep] if keep else record.texts

  def _load(self, image):
    if isinstance(image, np.ndarray):
      return image_lib.load_array(image, min_side=self._config.min_image_side)
    return image_lib.load_image(image, min_side=self._config.min_image_side)


def _caption_id(record: RawRecord, caption_index: int) -> str:
  """A document's id: the record's, with '#k' when the record has several captions."""
  return record.id if len(record.texts) == 1 else f'{record.id}#{caption_index}'


class EncodeImages(beam.DoFn):
  """VQ-GAN-encodes a batch of prepared records and emits one Document per caption."""

  def __init__(self, config: PreprocessConfig):
    self._config = config

  def setup(self):
    # JAX starts only on workers.
    from cm3leon_jax.tokenizers.image import ImageTokenizer  # pylint: disable=g-import-not-at-top
    self._tokenizer = ImageTokenizer.load(self._config.image_tokenizer)
    self._clip = None
    if self._config.clip:
      self._clip = encoder_lib.DocumentEncoder(self._config.clip, self._config.batch_size)

  def process(self, batch: List[Prepared]) -> Iterable[store_lib.Document]:
    size = self._config.batch_size
    for start in range(0, len(batch), size):
      chunk = batch[start:start + size]
      pixels = np.stack([p.pixels for p in chunk])
      padded = np.concatenate([pixels, np.zeros((size - len(chunk),) + pixels.shape[1:],
                                                pixels.dtype)])
      codes = np.asarray(self._tokenizer.encode(padded))[:len(chunk)]
      beam.metrics.Metrics.counter(COUNTER_NAMESPACE, 'images_encoded').inc(len(chunk))
      embeddings = self._clip_embeddings(chunk)
      for prepared, image_codes, embedding in zip(chunk, codes, embeddings):
        yield from _documents(prepared, image_codes.ravel(), embedding)

  def _clip_embeddings(self, chunk: List[Prepared]) -> List[Optional[np.ndarray]]:
    if self._clip is None:
      return [None] * len(chunk)
    pixels = np.stack([p.clip_pixels for p in chunk])
    return list(encoder_lib.normalise(self._clip.embed_pixels(pixels)))


def _documents(prepared: Prepared, image_codes: np.ndarray,
               clip_embedding: Optional[np.ndarray]) -> Iterable[store_lib.Document]:
  record = prepared.record
  for k, text, ids in prepared.captions:
    beam.metrics.Metrics.counter(COUNTER_NAMESPACE, 'documents').inc()
    yield store_lib.Document(_caption_id(record, k), record.index, k, text, ids,
                             image_codes.astype(np.int32), dict(record.metadata),
                             clip_image_embedding=clip_embedding)


def _write_manifest(_, shards, bad, manifest: Dict[str, Any], output_dir: str) -> str:
  """Write bad_records.jsonl and manifest.json once every shard is written."""
  bad = sorted(bad, key=lambda b: (b['id'], b['reason']))
  with tf.io.gfile.GFile(os.path.join(output_dir, store_lib.BAD_RECORDS), 'w') as f:
    f.write(''.join(json.dumps(b, sort_keys=True) + '\n' for b in bad))
  counts = {reason: sum(b['reason'] == reason for b in bad) for reason in BAD_REASONS}
  shards = sorted(shards)
  manifest = dict(manifest, num_documents=sum(n for _, n in shards), num_bad=len(bad),
                  bad_by_reason=counts, bad_records_file=store_lib.BAD_RECORDS,
                  shards=[{'file': name, 'num_documents': n} for name, n in shards])
  path = os.path.join(output_dir, store_lib.MANIFEST)
  with tf.io.gfile.GFile(path, 'w') as f:
    json.dump(manifest, f, indent=2, sort_keys=True)
  return path


def build_pipeline(root: beam.Pipeline, source, config: PreprocessConfig,
                   tokenizer_config, stages=None) -> None:
  """Add the preprocessing stages for `source` to the pipeline `root`; `stages` is the
  (check, encode) DoFn classes pair, by default the caption pipeline's."""
  check, encode = stages or (CheckAndPrepare, EncodeImages)
  num_records = source.num_records()
  image_size = tokenizer_config.resolution
  prepared = (
      root
      | 'Ranges' >> beam.Create(read_ranges(num_records, config.num_read_ranges))
      | 'Read' >> beam.ParDo(ReadRange(source))
      | 'CheckAndPrepare' >> beam.ParDo(check(config, image_size)).with_outputs(
          'bad', main='good'))
  shards = (
      prepared.good
      | 'Batch' >> beam.BatchElements(min_batch_size=config.batch_size,
                                      max_batch_size=config.batch_size)
      | 'Encode' >> beam.ParDo(encode(config))
      | 'KeyByShard' >> beam.Map(
          lambda d: (store_lib.shard_of(d.index, num_records, config.num_shards), d))
      | 'GroupByShard' >> beam.GroupByKey()
      | 'WriteShards' >> beam.ParDo(WriteShard(config.output_dir, config.num_shards)))
  manifest = _manifest_header(source, config, tokenizer_config, num_records)
  _ = (root
       | 'ManifestTrigger' >> beam.Create([None])
       | 'WriteManifest' >> beam.Map(_write_manifest, beam.pvalue.AsList(shards),
                                     beam.pvalue.AsList(prepared.bad), manifest,
                                     config.output_dir))


def _manifest_header(source, config: PreprocessConfig, tokenizer_config,
                     num_records: int) -> Dict[str, Any]:
  grid = tokenizer_config.resolution // tokenizer_config.downsample_factor
  return {
      'format': 'tfrecord', 'format_version': store_lib.FORMAT_VERSION,
      'source': source.describe(), 'num_records_read': num_records,
      'image_size': tokenizer_config.resolution, 'image_grid': [grid, grid],
      'tokens_per_image': grid * grid,
      'image_tokenizer': {'path': os.path.abspath(config.image_tokenizer),
                          'config': dataclasses.asdict(tokenizer_config)},
      'vocabulary': {'text_vocabulary': text_vocabulary_file(config),
                     'num_image_codes': tokenizer_config.n_embed,
                     'num_sentinels': config.num_sentinels},
      'captions_per_image': config.captions_per_image,
      'max_text_tokens': config.max_text_tokens,
      'max_document_tokens': config.max_document_tokens,
      'clip': _clip_manifest(config.clip),
  }


def _clip_manifest(clip: Optional[str]) -> Optional[Dict[str, Any]]:
  """The CLIP whose image embeddings the store holds: its path and identity (or None)."""
  if not clip:
    return None
  return {'path': os.path.abspath(clip),
          'encoder': dataclasses.asdict(encoder_lib.encoder_info(clip))}


def text_vocabulary_file(config: PreprocessConfig) -> str:
  """The name the text vocabulary is copied under inside the split's folder."""
  extension = os.path.splitext(config.text_vocabulary)[1] or '.model'
  return 'text_vocabulary' + extension


def copy_text_vocabulary(config: PreprocessConfig) -> None:
  """Copy the text vocabulary into the store so the store alone is enough to train on."""
  tf.io.gfile.makedirs(config.output_dir)
  tf.io.gfile.copy(config.text_vocabulary,
                   os.path.join(config.output_dir, text_vocabulary_file(config)), overwrite=True)


def run(source, config: PreprocessConfig, pipeline_options: Optional[PipelineOptions] = None,
        stages=None) -> str:
  """Run the whole pipeline (`stages` as in build_pipeline); returns the manifest's path."""
  from cm3leon_jax.tokenizers.image import ImageTokenizer  # pylint: disable=g-import-not-at-top
  tokenizer_config = ImageTokenizer.load_config(config.image_tokenizer)
  copy_text_vocabulary(config)
  with beam.Pipeline(options=local_runner_by_default(pipeline_options)) as root:
    build_pipeline(root, source, config, tokenizer_config, stages)
  return os.path.join(config.output_dir, store_lib.MANIFEST)
