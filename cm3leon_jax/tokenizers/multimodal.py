"""The multimodal vocabulary: text pieces, special tokens and image codes in one id space.

Layout (ids are stable for a given text vocabulary, sentinel count and codebook size):

  [0, T)                  the text vocabulary's own ids (its pad 0, eos and unk included)
  [T, T + S)              specials: <break>, <infill>, <eoss>, <mask>, then <sentinel:0..n-1>
  [T + S, T + S + C)      image codes 0..C-1
  [T + S + C, vocab_size) unused padding up to a multiple of 128 (fast matmuls, even sharding)

A document is a list of segments (``Text``, ``Image``, ``Special``); ``encode_document`` turns it
into ids with ``<break>`` at every boundary that touches an image, as CM3Leon does
(``text <break> image``), and ``decode_document`` inverts it exactly.
"""

import dataclasses
from typing import List, Sequence, Union

import numpy as np
import seqio
import tensorflow as tf

from cm3leon_jax.tokenizers import tf_ops

SPECIALS = ('<break>', '<infill>', '<eoss>', '<mask>')
PAD_TO_MULTIPLE = 128


@dataclasses.dataclass(frozen=True)
class Text:
  """A run of text."""

  text: str


@dataclasses.dataclass(frozen=True)
class Image:
  """An image as its VQ codes, flattened row-major."""

  codes: tuple

  def __init__(self, codes):
    object.__setattr__(self, 'codes', tuple(int(c) for c in np.asarray(codes).ravel()))


@dataclasses.dataclass(frozen=True)
class Special:
  """A special token other than <break> (which documents carry implicitly), e.g. '<mask>'."""

  name: str


Segment = Union[Text, Image, Special]


class MultimodalVocabulary(seqio.Vocabulary):
  """A seqio Vocabulary over a text vocabulary plus special tokens and a block of image codes."""

  def __init__(self, text_vocabulary: seqio.Vocabulary, num_image_codes: int = 8192,
               num_sentinels: int = 256, pad_to_multiple: int = PAD_TO_MULTIPLE):
    """Build the id layout (see module docstring).

    Args:
      text_vocabulary: any seqio text vocabulary (SentencePiece, or ``TokenizersVocabulary``).
      num_image_codes: the image tokenizer's codebook size.
      num_sentinels: CM3 span sentinels <sentinel:i> (each masked span takes one).
      pad_to_multiple: round vocab_size up to this (1 disables padding).
    """
    if num_image_codes <= 0 or num_sentinels < 0 or pad_to_multiple <= 0:
      raise ValueError('MultimodalVocabulary needs num_image_codes > 0, num_sentinels >= 0 and '
                       f'pad_to_multiple > 0; got {num_image_codes}, {num_sentinels}, '
                       f'{pad_to_multiple}.')
    self.text_vocabulary = text_vocabulary
    self.num_text = text_vocabulary.vocab_size
    self.special_names = SPECIALS + tuple(f'<sentinel:{i}>' for i in range(num_sentinels))
    self._special_ids = {name: self.num_text + i for i, name in enumerate(self.special_names)}
    self.first_image_id = self.num_text + len(self.special_names)
    self.num_image_codes = num_image_codes
    used = self.first_image_id + num_image_codes
    super().__init__(extra_ids=-used % pad_to_multiple)
    self._used = used

  # --- seqio.Vocabulary -------------------------------------------------------------------------
  @property
  def eos_id(self):
    return self.text_vocabulary.eos_id

  @property
  def unk_id(self):
    return self.text_vocabulary.unk_id

  @property
  def _base_vocab_size(self) -> int:
    return self._used

  def _encode(self, s: str) -> Sequence[int]:
    return self.text_vocabulary.encode(s)

  def _decode(self, ids) -> str:
    """Text ids through the text vocabulary; specials by name; image codes as <img:CODE>."""
    parts, text_run = [], []
    for i in ids:
      if i < self.num_text:
        text_run.append(i)
        continue
      if text_run:
        parts.append(self.text_vocabulary.decode(text_run))
        text_run = []
      parts.append(self.token_name(i))
    if text_run:
      parts.append(self.text_vocabulary.decode(text_run))
    return ''.join(parts)

  def _encode_tf(self, s: tf.Tensor) -> tf.Tensor:
    return self.text_vocabulary.encode_tf(s)

  def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
    # Decoding mixes text and image ids; seqio calls this only in evaluation postprocessing.
    return tf_ops.decode_tf(self._decode, ids)

  # --- special tokens and image codes -----------------------------------------------------------
  def special_id(self, name: str) -> int:
    """Id of a special token, e.g. '<break>' or '<sentinel:3>'."""
    try:
      return self._special_ids[name]
    except KeyError:
      raise ValueError(f'Unknown special token {name!r}; known: {list(SPECIALS)} and '
                       f'<sentinel:0..{len(self.special_names) - len(SPECIALS) - 1}>.') from None

  @property
  def break_id(self) -> int:
    return self._special_ids['<break>']

  @property
  def mask_id(self) -> int:
    return self._special_ids['<mask>']

  @property
  def infill_id(self) -> int:
    return self._special_ids['<infill>']

  @property
  def eoss_id(self) -> int:
    return self._special_ids['<eoss>']

  def sentinel_id(self, index: int) -> int:
    """Id of the CM3 sentinel <sentinel:index>."""
    return self.special_id(f'<sentinel:{index}>')

  def image_ids(self, codes) -> np.ndarray:
    """Token ids of image codes (any shape)."""
    codes = np.asarray(codes)
    if codes.size and (codes.min() < 0 or codes.max() >= self.num_image_codes):
      raise ValueError(f'Image codes must lie in [0, {self.num_image_codes}); got '
                       f'[{codes.min()}, {codes.max()}].')
    return codes.astype(np.int32) + self.first_image_id

  def image_codes(self, ids) -> np.ndarray:
    """Image codes of image token ids (any shape); raises if any id is not an image token."""
    ids = np.asarray(ids)
    if not self.is_image(ids).all():
      raise ValueError('image_codes() got ids that are not image tokens.')
    return (ids - self.first_image_id).astype(np.int32)

  def is_image(self, ids):
    """Boolean mask of image token ids (numpy or jax arrays)."""
    return (ids >= self.first_image_id) & (ids < self.first_image_id + self.num_image_codes)

  def is_text(self, ids) -> np.ndarray:
    """Boolean mask of text token ids: the text vocabulary's own ids."""
    ids = np.asarray(ids)
    return (ids >= 0) & (ids < self.num_text)

  # Guidance masks the text of a prompt (each run becomes one <mask>), as the CM3 objective
  # taught the model; see decoding.sampling.unconditional_prompt.
  guidance_style = 'mask'

  @property
  def sequence_start_ids(self) -> tuple:
    """What a prompt starts with: nothing (documents have no begin-of-sequence token)."""
    return ()

  @property
  def image_open_id(self) -> int:
    """The token before an image's codes: <break>."""
    return self.break_id

  @property
  def image_close_id(self) -> int:
    """The token after an image's codes: <break> (text follows an image after one)."""
    return self.break_id

  def token_name(self, token_id: int) -> str:
    """A readable name for a non-text id: '<break>', '<img:17>', '<unused:5>'."""
    if self.num_text <= token_id < self.first_image_id:
      return self.special_names[token_id - self.num_text]
    if self.first_image_id <= token_id < self._used:
      return f'<img:{token_id - self.first_image_id}>'
    return f'<unused:{token_id}>'

  # --- documents --------------------------------------------------------------------------------
  def encode_document(self, segments: Sequence[Segment]) -> List[int]:
    """Ids of a document, with <break> between two segments when either is an image."""
    ids: List[int] = []
    previous = None
    for segment in segments:
      if previous is not None and (isinstance(segment, Image) or isinstance(previous, Image)):
        ids.append(self.break_id)
      ids.extend(self._segment_ids(segment))
      previous = segment
    return ids

  def _segment_ids(self, segment: Segment) -> List[int]:
    if isinstance(segment, Text):
      if not segment.text:
        raise ValueError('Text segments must not be empty.')
      return list(self.text_vocabulary.encode(segment.text))
    if isinstance(segment, Image):
      return self.image_ids(segment.codes).tolist()
    if isinstance(segment, Special):
      if segment.name == '<break>':
        raise ValueError('<break> is implicit in documents: encode_document inserts it.')
      return [self.special_id(segment.name)]
    raise TypeError(f'Unknown document segment {segment!r}.')

  def decode_document(self, ids: Sequence[int]) -> List[Segment]:
    """Segments of a document's ids (the inverse of encode_document)."""
    segments: List[Segment] = []
    run: List[int] = []
    run_kind = None
    for i in list(ids) + [None]:
      kind = None if i is None else ('image' if self.is_image(i) else
                                      'text' if i < self.num_text else 'special')
      if run and kind != run_kind:
        segments.append(Image(self.image_codes(run)) if run_kind == 'image'
                        else Text(self.text_vocabulary.decode(run)))
        run = []
      if kind in ('text', 'image'):
        run.append(i)
        run_kind = kind
      elif kind == 'special' and i != self.break_id:
        segments.append(Special(self.token_name(i)))
    return segments

  def __eq__(self, other):
    return (isinstance(other, MultimodalVocabulary) and
            _text_identity(self.text_vocabulary) == _text_identity(other.text_vocabulary) and
            self.special_names == other.special_names and
            self.num_image_codes == other.num_image_codes and self.vocab_size == other.vocab_size)

  def __hash__(self):
    return hash((self.special_names, self.num_image_codes, self.vocab_size))


def _text_identity(vocabulary: seqio.Vocabulary):
  """What makes two text vocabularies the same: their model, not the path of its file (each
  store keeps its own copy, and a mixture of stores needs them equal)."""
  if isinstance(vocabulary, seqio.SentencePieceVocabulary):
    return 'sentencepiece', vocabulary.sp_model, vocabulary.extra_ids
  return vocabulary
