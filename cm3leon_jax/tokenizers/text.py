"""A seqio Vocabulary over a Hugging Face `tokenizers` JSON file (e.g. Chameleon's tokenizer.json)."""

from typing import Optional, Sequence

import seqio
import tensorflow as tf
import tokenizers

from cm3leon_jax.tokenizers import tf_ops


class TokenizersVocabulary(seqio.Vocabulary):
  """Text vocabulary backed by `tokenizers.Tokenizer.from_file`.

  seqio pads with id 0, so whatever the file holds at id 0 doubles as padding; pass `pad_token` to
  have the constructor check that the file agrees.
  """

  def __init__(self, path: str, eos_token: str = '</s>', unk_token: Optional[str] = '<unk>',
               pad_token: Optional[str] = None):
    """Load the tokenizer file.

    Args:
      path: a tokenizer.json file.
      eos_token: the file's end-of-sequence token.
      unk_token: the file's unknown token (None if it has none).
      pad_token: the file's pad token; if given, it must have id 0 (seqio's PAD_ID).
    """
    super().__init__(extra_ids=0)
    self.path = path
    self._tokenizer = tokenizers.Tokenizer.from_file(path)
    self._eos_id = self._id_of(eos_token)
    self._unk_id = self._id_of(unk_token) if unk_token else None
    if pad_token is not None and self._id_of(pad_token) != 0:
      raise ValueError(f'{path}: pad token {pad_token!r} has id {self._id_of(pad_token)}, but '
                       'seqio pads with id 0.')

  def _id_of(self, token: str) -> int:
    token_id = self._tokenizer.token_to_id(token)
    if token_id is None:
      raise ValueError(f'{self.path}: the tokenizer has no token {token!r}.')
    return token_id

  @property
  def eos_id(self) -> int:
    return self._eos_id

  @property
  def unk_id(self) -> Optional[int]:
    return self._unk_id

  @property
  def _base_vocab_size(self) -> int:
    return self._tokenizer.get_vocab_size(with_added_tokens=True)

  def _encode(self, s: str) -> Sequence[int]:
    return self._tokenizer.encode(s, add_special_tokens=False).ids

  def _decode(self, ids) -> str:
    return self._tokenizer.decode(list(ids), skip_special_tokens=False)

  def _encode_tf(self, s: tf.Tensor) -> tf.Tensor:
    return tf_ops.encode_tf(self._encode, s)

  def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
    return tf_ops.decode_tf(self._decode, ids)

  def _identity(self):
    # The tokenizer itself, not its file's path: each store keeps its own copy of the file.
    return self._tokenizer.to_str(), self._eos_id, self._unk_id

  def __eq__(self, other):
    return isinstance(other, TokenizersVocabulary) and self._identity() == other._identity()

  def __hash__(self):
    return hash(self._identity())
