"""The Beam pipeline for instruction records: the caption pipeline's stages with instruction
documents (``data.preprocess`` for the shape of the pipeline, the store and the manifest).

  ranges -> read -> check and prepare (fill the template, decode and align the images, compute a
    missing canny control, tokenize the texts) -> batches -> VQ-GAN encode every image of a
    record -> one document of parts per record -> sorted shards; bad records counted and listed

Bad records never stop the run. Besides the caption pipeline's reasons, a record is skipped as
``bad_template`` (a missing or empty field, an unknown task or control, a box outside its image),
``image_size_mismatch`` (an edit pair, or a control image and its target, of different sizes) or
``document_too_long`` (longer than ``max_document_tokens``, the training sequence length).
"""

import dataclasses
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
import numpy as np

from cm3leon_jax.data import images as image_lib
from cm3leon_jax.data import preprocess
from cm3leon_jax.data import sft_sources
from cm3leon_jax.data import sft_templates as templates
from cm3leon_jax.data import store as store_lib
from cm3leon_jax.data.preprocess import COUNTER_NAMESPACE, PreprocessConfig, bad_record


@dataclasses.dataclass
class PreparedInstruction:
  """A record that passed the checks: its document's parts (image codes still empty), the text
  the template renders to, and the pixels of each image by role."""

  record: sft_sources.InstructionRecord
  text: str
  parts: Tuple[store_lib.DocumentPart, ...]
  image_roles: Tuple[str, ...]  # The role of each image part, in order.
  pixels: Dict[str, np.ndarray]


def document_parts(parts: Sequence[templates.Part], encode: Callable[[str], Sequence[int]],
                   image_codes: Mapping[str, np.ndarray],
                   record_id: str = '?') -> Tuple[store_lib.DocumentPart, ...]:
  """A filled template as the store keeps it: texts through `encode` (the text vocabulary's),
  images as the raw codes of `image_codes` by name."""
  templates.require_images(parts, image_codes, record_id)
  stored = []
  for part in parts:
    if isinstance(part, templates.TextPart):
      ids = np.asarray(encode(part.text), np.int32)
      stored.append(store_lib.DocumentPart(store_lib.TEXT_PART, ids, part.output, part.joined))
    else:
      codes = np.asarray(image_codes[part.name], np.int32).ravel()
      stored.append(store_lib.DocumentPart(store_lib.IMAGE_PART, codes, part.output))
  return tuple(stored)


class _Skip(Exception):
  """A record to count as bad: (reason, message)."""


class CheckAndPrepareInstruction(beam.DoFn):
  """Fills the template, loads and aligns the images, tokenizes the texts; bad records to 'bad'."""

  def __init__(self, config: PreprocessConfig, image_size: int):
    self._config, self._image_size = config, image_size

  def setup(self):
    from cm3leon_jax.tokenizers.image import ImageTokenizer  # pylint: disable=g-import-not-at-top
    self._text = store_lib.text_vocabulary(self._config.text_vocabulary)
    tokenizer = ImageTokenizer.load_config(self._config.image_tokenizer)
    self._tokens_per_image = (tokenizer.resolution // tokenizer.downsample_factor) ** 2

  def process(self, record: sft_sources.InstructionRecord):
    if record.error:
      yield bad_record(record.id, 'unreadable_record', record.error)
      return
    try:
      yield self._prepare(record)
    except _Skip as skip:
      yield bad_record(record.id, *skip.args)

  def _prepare(self, record) -> PreparedInstruction:
    loaded = self._load_images(record)
    try:
      record = self._with_boxes_after_preprocess(record, loaded)
    except (TypeError, ValueError) as e:
      raise _Skip('bad_template', f'Record {record.id}: objects must be [name, [x0, y0, x1, '
                  f'y1]] pairs: {e}') from e
    try:
      parts = sft_sources.template_parts(record, self._image_size)
      templates.check_images(parts, {**{k: v.size for k, v in loaded.items()},
                                     **self._computed_controls(record, loaded)}, record.id)
    except templates.TemplateError as e:
      reason = 'image_size_mismatch' if 'differ in size' in str(e) else 'bad_template'
      raise _Skip(reason, str(e)) from e
    pixels = {name: image_lib.preprocess(image, self._image_size) for name, image in loaded.items()}
    if 'control' in templates.image_names(parts) and 'control' not in pixels:
      edges = sft_sources.canny_edges(image_lib.postprocess(pixels['output']))
      pixels['control'] = edges.astype(np.float32) / 127.5 - 1.0
    stored = document_parts(parts, self._encode_text(record),
                            {name: np.zeros(0, np.int32) for name in pixels}, record.id)
    self._check_length(record, stored)
    return PreparedInstruction(record, templates.render(parts), stored,
                               templates.image_names(parts), pixels)

  def _load_images(self, record):
    loaded = {}
    for name, image in record.images.items():
      if image is None:
        continue
      try:
        if isinstance(image, np.ndarray):
          loaded[name] = image_lib.load_array(image, min_side=self._config.min_image_side)
        else:
          loaded[name] = image_lib.load_image(image, min_side=self._config.min_image_side)
      except image_lib.ImageError as e:
        raise _Skip('bad_image', f'{name} image: {e}') from e
    return loaded

  @staticmethod
  def _computed_controls(record, loaded) -> Dict[str, Tuple[int, int]]:
    """A canny control the record lacks is computed from its output image (same size)."""
    if record.task == 'control:canny' and 'control' not in loaded and 'output' in loaded:
      return {'control': loaded['output'].size}
    return {}

  def _with_boxes_after_preprocess(self, record, loaded):
    """The record with its grounding boxes moved into the preprocessed image's pixels."""
    objects = record.fields.get('objects')
    if record.task != 'ground' or not objects or 'output' not in loaded:
      return record
    width, height = loaded['output'].size
    moved = []
    for label, box in objects:
      x0, y0, x1, y1 = box
      if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
        raise _Skip('bad_template', f'Record {record.id}: box {tuple(box)} of {label!r} is not '
                    f'inside its {width}x{height} image.')
      after = image_lib.box_after_preprocess(box, width, height, self._image_size)
      if after[0] >= after[2] or after[1] >= after[3]:
        raise _Skip('bad_template', f'Record {record.id}: {label!r} lies outside the centre '
                    'crop the image is cut to.')
      moved.append((label, after))
    return dataclasses.replace(record, fields=dict(record.fields, objects=moved))

  def _check_length(self, record, stored) -> None:
    """Skip a document longer than max_document_tokens: parts, <break>s and the final <eos>."""
    limit = self._config.max_document_tokens
    if limit is None:
      return
    length = sum(self._tokens_per_image if p.kind == store_lib.IMAGE_PART else len(p.ids)
                 for p in stored) + sum(not p.joined for p in stored[1:]) + 1
    if length > limit:
      raise _Skip('document_too_long', f'Record {record.id}: {length} tokens, more than '
                  f'max_document_tokens={limit} (the training sequence length).')

  def _encode_text(self, record):
    total = [0]

    def encode(text: str) -> np.ndarray:
      ids = np.asarray(self._text.encode(text), np.int32)
      total[0] += ids.size
      if total[0] > self._config.max_text_tokens:
        raise _Skip('text_too_long', f'more than max_text_tokens={self._config.max_text_tokens} '
                    'text tokens in its template')
      return ids

    return encode


class EncodeInstructionImages(beam.DoFn):
  """VQ-GAN-encodes every image of a batch of prepared records; emits one Document per record."""

  def __init__(self, config: PreprocessConfig):
    self._config = config

  def setup(self):
    from cm3leon_jax.tokenizers.image import ImageTokenizer  # pylint: disable=g-import-not-at-top
    self._tokenizer = ImageTokenizer.load(self._config.image_tokenizer)

  def process(self, batch: List[PreparedInstruction]) -> Iterable[store_lib.Document]:
    keys = [(i, name) for i, prepared in enumerate(batch) for name in prepared.pixels]
    pixels = [batch[i].pixels[name] for i, name in keys]
    codes = dict(zip(keys, self._encode(pixels)))
    for i, prepared in enumerate(batch):
      beam.metrics.Metrics.counter(COUNTER_NAMESPACE, 'documents').inc()
      yield _document(prepared, {name: codes[(i, name)] for name in prepared.pixels})

  def _encode(self, pixels: List[np.ndarray]) -> List[np.ndarray]:
    """Codes of each image, in fixed-size calls (one compilation per worker)."""
    size, codes = self._config.batch_size, []
    for start in range(0, len(pixels), size):
      chunk = np.stack(pixels[start:start + size])
      padded = np.concatenate([chunk, np.zeros((size - len(chunk),) + chunk.shape[1:],
                                               chunk.dtype)])
      codes += [c.ravel().astype(np.int32)
                for c in np.asarray(self._tokenizer.encode(padded))[:len(chunk)]]
      beam.metrics.Metrics.counter(COUNTER_NAMESPACE, 'images_encoded').inc(len(chunk))
    return codes


def _document(prepared: PreparedInstruction, codes: Dict[str, np.ndarray]) -> store_lib.Document:
  record = prepared.record
  roles = iter(prepared.image_roles)
  parts = tuple(dataclasses.replace(part, ids=codes[next(roles)])
                if part.kind == store_lib.IMAGE_PART else part for part in prepared.parts)
  metadata = dict(record.metadata, task=record.task)
  empty = np.zeros(0, np.int32)
  return store_lib.Document(record.id, record.index, record.variant, prepared.text, empty, empty,
                            metadata, parts=parts)


def run(source, config: PreprocessConfig,
        pipeline_options: Optional[PipelineOptions] = None) -> str:
  """Preprocess an instruction source into a store split; returns the manifest's path."""
  return preprocess.run(source, config, pipeline_options, stages=(CheckAndPrepareInstruction,
                                                                  EncodeInstructionImages))
