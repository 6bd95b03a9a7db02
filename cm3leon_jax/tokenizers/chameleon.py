"""Chameleon's vocabulary: one `tokenizers` file holding the text BPE, the special tokens and the
image tokens, as a seqio vocabulary with the interface of ``MultimodalVocabulary``.

Chameleon (arXiv 2405.09818) names each VQ code's token ``IMGIMG<digits>Z`` with the digits of the
code written as letters (A = 0, ..., J = 9): code 907 is ``IMGIMGJAHZ``. The map from code to
token id is whatever the file says; nothing assumes code + offset. An image is written
``<racm3:break> codes <eoss>``; ``<s>`` begins a sequence and ``</s>`` ends it.

Chameleon's files give ``<s>`` the id 0, while seqio pads with 0 and drops id 0 from the loss. So
inside this library the two ids of ``<s>`` and ``<pad>`` trade places: ``<pad>`` is 0 and ``<s>``
takes the pad's id; no ``<s>`` is ever read as padding, nor padding as ``<s>``. Encoding and
decoding apply the swap; ``checkpoint_ids`` and ``library_ids`` convert id arrays, and
``swap_rows`` the rows of an embedding or output matrix, at the boundary with checkpoints.
"""

import json
from typing import Dict, List, Optional, Sequence

import numpy as np
import seqio
import tensorflow as tf
import tokenizers

from cm3leon_jax.tokenizers import tf_ops
from cm3leon_jax.tokenizers.multimodal import Image, Segment, Special, Text

IMAGE_PREFIX, IMAGE_SUFFIX = 'IMGIMG', 'Z'
BOS, EOS, PAD = '<s>', '</s>', '<pad>'
BEGIN_IMAGE, END_IMAGE = '<racm3:break>', '<eoss>'
_LETTER_DIGITS = {chr(ord('A') + i): str(i) for i in range(10)}
# Kinds of ids (ChameleonVocabulary._kind_table).
_TEXT, _IMAGE, _SPECIAL, _UNUSED = 0, 1, 2, 3


class ChameleonVocabularyError(ValueError):
  """A tokenizer file that is not a Chameleon vocabulary; the message names the problem."""


def image_code(name: str) -> int:
  """The VQ code of an image token name, e.g. 'IMGIMGJAHZ' -> 907."""
  letters = name[len(IMAGE_PREFIX):-len(IMAGE_SUFFIX)]
  if (not name.startswith(IMAGE_PREFIX) or not name.endswith(IMAGE_SUFFIX) or not letters
      or any(c not in _LETTER_DIGITS for c in letters)):
    raise ChameleonVocabularyError(f'{name!r} is not an image token name ({IMAGE_PREFIX} + the '
                                   f'code in letters A-J + {IMAGE_SUFFIX}).')
  return int(''.join(_LETTER_DIGITS[c] for c in letters))


def image_token_name(code: int) -> str:
  """The image token name of a VQ code, e.g. 907 -> 'IMGIMGJAHZ'."""
  letters = {v: k for k, v in _LETTER_DIGITS.items()}
  return IMAGE_PREFIX + ''.join(letters[d] for d in str(int(code))) + IMAGE_SUFFIX


def token_map(path: str) -> Dict[str, int]:
  """Every token name of a tokenizer.json and its id: the BPE vocabulary and the added tokens
  (transformers' ``vocabulary_map`` holds the same)."""
  with open(path, encoding='utf-8') as f:
    document = json.load(f)
  names = dict(document.get('model', {}).get('vocab', {}))
  names.update({t['content']: t['id'] for t in document.get('added_tokens', [])})
  return names


def image_code_table(names: Dict[str, int], where: str) -> np.ndarray:
  """int32 [C]: the token id of each VQ code 0..C-1, from the IMGIMG names of `names`."""
  codes = {image_code(name): token for name, token in names.items()
           if name.startswith(IMAGE_PREFIX)}
  if not codes:
    raise ChameleonVocabularyError(f'{where} has no image tokens ({IMAGE_PREFIX}...{IMAGE_SUFFIX} '
                                   'names): it is not a Chameleon vocabulary.')
  missing = sorted(set(range(max(codes) + 1)) - set(codes))
  if missing:
    raise ChameleonVocabularyError(f'{where} names {len(codes)} image tokens but lacks codes '
                                   f'{missing[:10]}{"..." if len(missing) > 10 else ""}: every '
                                   f'code 0..{max(codes)} needs a token.')
  return np.array([codes[c] for c in range(len(codes))], np.int32)


class ChameleonVocabulary(seqio.Vocabulary):
  """Chameleon's tokenizer.json as the multimodal vocabulary (ids swapped as the module says)."""

  def __init__(self, path: str, vocabulary_map: Optional[Dict[str, int]] = None,
               num_image_codes: Optional[int] = None):
    """Load the tokenizer file.

    Args:
      path: Chameleon's tokenizer.json (transformers' layout) or text_tokenizer.json (Meta's).
      vocabulary_map: a checkpoint's config.json ``vocabulary_map``; its image tokens must have
        the ids the file gives them.
      num_image_codes: the image tokenizer's codebook size, which the image tokens must match.

    Raises:
      ChameleonVocabularyError: naming what makes the file unusable (no image tokens, a code
        without a token, image ids not in one block, a missing special token, a map or codebook
        that disagrees).
    """
    super().__init__(extra_ids=0)
    self.path = path
    self._tokenizer = tokenizers.Tokenizer.from_file(path)
    names = token_map(path)
    self._checkpoint_size = max(self._tokenizer.get_vocab_size(with_added_tokens=True),
                                max(names.values()) + 1)
    self._swap = self._swap_for(names)
    self._code_to_id = self.library_ids(image_code_table(names, path))
    self._check_agrees(names, vocabulary_map, num_image_codes)
    self._names = {self._swapped(i): name for name, i in names.items()}
    self._ids = {name: i for i, name in self._names.items()}
    self._kinds = self._kind_table()
    self.first_image_id = int(self._code_to_id.min())
    self.num_image_codes = len(self._code_to_id)
    if int(self._code_to_id.max()) - self.first_image_id + 1 != self.num_image_codes:
      raise ChameleonVocabularyError(
          f'{path}: the image tokens do not occupy one block of ids (they span '
          f'[{self.first_image_id}, {int(self._code_to_id.max())}] for {self.num_image_codes} '
          'codes); the decoder\'s image loss and modality control need one block, in any order.')
    self._id_to_code = np.full(self._checkpoint_size, -1, np.int32)
    self._id_to_code[self._code_to_id] = np.arange(self.num_image_codes, dtype=np.int32)
    self.special_names = tuple(name for _, name in sorted(
        (i, n) for i, n in self._names.items() if self._kinds[i] == _SPECIAL))

  # --- the id swap --------------------------------------------------------------------------------
  def _swap_for(self, names: Dict[str, int]):
    """(0, pad id) when id 0 is not the pad token, else None."""
    for name in (BOS, EOS, BEGIN_IMAGE, END_IMAGE):
      if name not in names:
        raise ChameleonVocabularyError(f'{self.path} lacks Chameleon\'s special token {name!r}.')
    pad = names.get(PAD)
    if pad == 0:
      return None
    if pad is None:
      raise ChameleonVocabularyError(
          f'{self.path}: id 0 is {self._tokenizer.id_to_token(0)!r} and there is no {PAD!r} '
          'token to trade places with it; seqio pads with id 0.')
    return (0, pad)

  def _swapped(self, token_id: int) -> int:
    if self._swap is None:
      return token_id
    a, b = self._swap
    return b if token_id == a else a if token_id == b else token_id

  def library_ids(self, checkpoint_ids) -> np.ndarray:
    """This library's ids of a checkpoint's (or the tokenizers library's) ids (any shape)."""
    ids = np.array(checkpoint_ids, np.int32)
    if self._swap is not None:
      a, b = self._swap
      ids = np.where(ids == a, b, np.where(ids == b, a, ids)).astype(np.int32)
    return ids

  checkpoint_ids = library_ids  # The swap is its own inverse.

  def swap_rows(self, matrix: np.ndarray, axis: int = 0) -> np.ndarray:
    """`matrix` with the rows (along `axis`) of the two swapped ids exchanged: an embedding
    table or output projection between a checkpoint's ids and this library's."""
    if self._swap is None:
      return matrix
    order = self.library_ids(np.arange(matrix.shape[axis]))
    return np.take(matrix, order, axis=axis)

  # --- checks -------------------------------------------------------------------------------------
  def _check_agrees(self, names, vocabulary_map, num_image_codes):
    if num_image_codes is not None and num_image_codes != len(self._code_to_id):
      raise ChameleonVocabularyError(
          f'{self.path} has {len(self._code_to_id)} image tokens but the image tokenizer\'s '
          f'codebook has {num_image_codes} codes.')
    if vocabulary_map is None:
      return
    images = sorted(name for name in names if name.startswith(IMAGE_PREFIX))
    missing = [name for name in images if name not in vocabulary_map]
    if missing:
      raise ChameleonVocabularyError(
          f'The checkpoint\'s vocabulary_map lacks {len(missing)} image token'
          f'{"s" if len(missing) > 1 else ""} of {self.path} (first: {missing[0]!r}).')
    wrong = [name for name in images if vocabulary_map[name] != names[name]]
    if wrong:
      raise ChameleonVocabularyError(
          f'The checkpoint\'s vocabulary_map disagrees with {self.path} on {len(wrong)} image '
          f'tokens (first: {wrong[0]!r}: map {vocabulary_map.get(wrong[0])}, file '
          f'{names[wrong[0]]}).')

  def _kind_table(self) -> np.ndarray:
    """Per id: text, image, special (names in angle brackets, as Chameleon's VocabInfo), unused."""
    kinds = np.full(self._checkpoint_size, _UNUSED, np.int8)
    for token_id, name in self._names.items():
      kinds[token_id] = _SPECIAL if name.startswith('<') and name != '<' else _TEXT
    kinds[self._code_to_id] = _IMAGE
    return kinds

  # --- seqio.Vocabulary -------------------------------------------------------------------------
  @property
  def _base_vocab_size(self) -> int:
    return self._checkpoint_size

  @property
  def eos_id(self) -> int:
    return self._ids[EOS]

  @property
  def unk_id(self) -> Optional[int]:
    return self._ids.get('<unk>')

  @property
  def bos_id(self) -> int:
    return self._ids[BOS]

  def _encode(self, s: str) -> Sequence[int]:
    """Ids of text as the tokenizers library encodes it (specials in the text included)."""
    return self.library_ids(self._tokenizer.encode(s, add_special_tokens=False).ids).tolist()

  def _decode(self, ids) -> str:
    return self._tokenizer.decode(self.checkpoint_ids(list(ids)).tolist(),
                                  skip_special_tokens=False)

  def _encode_tf(self, s: tf.Tensor) -> tf.Tensor:
    return tf_ops.encode_tf(self._encode, s)

  def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
    return tf_ops.decode_tf(self._decode, ids)

  # --- the MultimodalVocabulary interface ---------------------------------------------------------
  @property
  def text_vocabulary(self) -> 'ChameleonVocabulary':
    """Text encodes through the same file, so the text vocabulary is this one."""
    return self

  @property
  def break_id(self) -> int:
    """<racm3:break>, which opens an image (Chameleon's begin-image token)."""
    return self._ids[BEGIN_IMAGE]

  @property
  def eoss_id(self) -> int:
    """<eoss>, which closes an image (and a CM3 span)."""
    return self._ids[END_IMAGE]

  # Guidance drops the text of a prompt, as Chameleon's inference code does (its model never saw
  # a mask token); see decoding.sampling.text_dropped_prompt.
  guidance_style = 'drop'

  @property
  def sequence_start_ids(self) -> tuple:
    """What a prompt starts with: <s>."""
    return (self.bos_id,)

  @property
  def image_open_id(self) -> int:
    return self.break_id

  @property
  def image_close_id(self) -> int:
    return self.eoss_id

  @property
  def mask_id(self) -> int:
    return self._required('<mask>', 'a CM3 mask token')

  @property
  def infill_id(self) -> int:
    return self._required('<infill>', 'a CM3 infill token')

  def special_id(self, name: str) -> int:
    """Id of a special token by name, e.g. '<sentinel:3>'."""
    return self._required(name, 'that special token')

  def sentinel_id(self, index: int) -> int:
    """Id of the CM3 sentinel <sentinel:index>."""
    return self.special_id(f'<sentinel:{index}>')

  def _required(self, name: str, what: str) -> int:
    if name not in self._ids:
      raise ChameleonVocabularyError(f'{self.path} has no {name!r} ({what}).')
    return self._ids[name]

  def image_ids(self, codes) -> np.ndarray:
    """Token ids of image codes (any shape), through the file's map."""
    codes = np.asarray(codes)
    if codes.size and (codes.min() < 0 or codes.max() >= self.num_image_codes):
      raise ValueError(f'Image codes must lie in [0, {self.num_image_codes}); got '
                       f'[{codes.min()}, {codes.max()}].')
    return self._code_to_id[codes.astype(np.int64)]

  def image_codes(self, ids) -> np.ndarray:
    """Image codes of image token ids (any shape); raises if any id is not an image token."""
    ids = np.asarray(ids)
    if not np.all(self.is_image(ids)):
      raise ValueError('image_codes() got ids that are not image tokens.')
    return self._id_to_code[ids.astype(np.int64)]

  def is_image(self, ids):
    """Boolean mask of image token ids (numpy or jax arrays): the one block they occupy."""
    return (ids >= self.first_image_id) & (ids < self.first_image_id + self.num_image_codes)

  def is_text(self, ids) -> np.ndarray:
    """Boolean mask of text token ids (not image, not special, not unused)."""
    ids = np.asarray(ids)
    inside = (ids >= 0) & (ids < self._checkpoint_size)
    return inside & (self._kinds[np.clip(ids, 0, self._checkpoint_size - 1)] == _TEXT)

  def token_name(self, token_id: int) -> str:
    """The file's name of an id ('<racm3:break>', 'IMGIMGBZ', a text piece), or '<unused:N>'."""
    return self._names.get(int(token_id), f'<unused:{int(token_id)}>')

  # --- documents ----------------------------------------------------------------------------------
  def encode_document(self, segments: Sequence[Segment]) -> List[int]:
    """Ids of a document in Chameleon's layout: text as encoded, each image as
    ``<racm3:break> codes <eoss>``, specials by name. No ``<s>``: prompts add it."""
    ids: List[int] = []
    for segment in segments:
      if isinstance(segment, Text):
        if not segment.text:
          raise ValueError('Text segments must not be empty.')
        ids.extend(self._encode(segment.text))
      elif isinstance(segment, Image):
        ids.extend([self.break_id, *self.image_ids(segment.codes).tolist(), self.eoss_id])
      elif isinstance(segment, Special):
        ids.append(self.special_id(segment.name))
      else:
        raise TypeError(f'Unknown document segment {segment!r}.')
    return ids

  def decode_document(self, ids: Sequence[int]) -> List[Segment]:
    """Segments of a document's ids (the inverse of encode_document)."""
    segments: List[Segment] = []
    text: List[int] = []
    index, ids = 0, list(ids)
    while index < len(ids):
      token = ids[index]
      if token == self.break_id:
        end = index + 1
        while end < len(ids) and self.is_image(ids[end]):
          end += 1
        closed = end < len(ids) and ids[end] == self.eoss_id
        if closed and end > index + 1:
          segments.extend(self._flush(text))
          segments.append(Image(self.image_codes(ids[index + 1:end])))
          index = end + 1
          continue
      if self.is_text(token):
        text.append(token)
      else:
        segments.extend(self._flush(text))
        segments.append(Special(self.token_name(token)))
      index += 1
    return segments + self._flush(text)

  def _flush(self, text: List[int]) -> List[Segment]:
    """The pending text run as one segment (emptying it)."""
    if not text:
      return []
    segment = Text(self._decode(text))
    text.clear()
    return [segment]

  def __eq__(self, other):
    return isinstance(other, ChameleonVocabulary) and self.path == other.path

  def __hash__(self):
    return hash(self.path)

