"""A SentencePiece model (BPE or unigram) as a `tokenizers` Tokenizer that encodes text to the same
ids, so an exported model can ship one ``tokenizer.json`` that transformers' fast tokenizers read.

SentencePiece's encoding is rebuilt from the parts of its ``.model`` file:

- normalization: the model's precompiled character map (e.g. nmt_nfkc), then, as its
  ``remove_extra_whitespaces`` asks, leading and trailing spaces removed and runs of spaces made
  one;
- whitespace becomes ``▁`` and, with ``add_dummy_prefix``, one is put before the text; pieces
  never span a ``▁`` inside them, so splitting before each ``▁`` changes nothing;
- BPE merges every adjacent pair whose joined piece is in the vocabulary, best score first: a
  `tokenizers` BPE whose merges are those pairs ranked by the joined piece's score; unigram keeps
  the pieces' scores (Viterbi in both);
- characters without a piece become ``<0xNN>`` bytes with byte fallback, else ``<unk>``.

Control and user-defined pieces (``<pad>``, ``</s>``, ...) become added tokens, which
`tokenizers` also recognises when their names appear inside a text (SentencePiece would spell
them out); texts that hold no such name encode to SentencePiece's ids.
"""

from typing import Dict, List, Tuple

import tokenizers
from sentencepiece import sentencepiece_model_pb2
from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers

SPACE = '\u2581'  # SentencePiece's whitespace symbol ▁.
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6
_BPE, _UNIGRAM = 2, 1


class SentencePieceConversionError(ValueError):
  """A SentencePiece model this conversion cannot reproduce; the message names the setting."""


def read_model(path: str) -> sentencepiece_model_pb2.ModelProto:
  """The ModelProto of a SentencePiece ``.model`` file."""
  proto = sentencepiece_model_pb2.ModelProto()
  with open(path, 'rb') as f:
    proto.ParseFromString(f.read())
  return proto


def tokenizer_from_sentencepiece(path: str) -> tokenizers.Tokenizer:
  """A Tokenizer that gives the ids SentencePiece gives the model at `path` (see module doc).

  Raises:
    SentencePieceConversionError: a model type other than BPE or unigram, or whitespace treated
      as a suffix.
  """
  proto = read_model(path)
  _check_convertible(proto, path)
  pieces = [(p.piece, p.score) for p in proto.pieces]
  unk_id = next((i for i, p in enumerate(proto.pieces) if p.type == _UNKNOWN), None)
  byte_fallback = proto.trainer_spec.byte_fallback
  if proto.trainer_spec.model_type == _BPE:
    model = models.BPE(dict((piece, i) for i, (piece, _) in enumerate(pieces)),
                       _bpe_merges(proto), unk_token=pieces[unk_id][0] if unk_id is not None
                       else None, byte_fallback=byte_fallback, fuse_unk=True)
  else:
    model = models.Unigram(pieces, unk_id, byte_fallback)
  tokenizer = tokenizers.Tokenizer(model)
  tokenizer.normalizer = _normalizer(proto.normalizer_spec)
  prepend = 'always' if proto.normalizer_spec.add_dummy_prefix else 'never'
  tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(SPACE, prepend, split=True)
  tokenizer.decoder = _decoder(proto.normalizer_spec.add_dummy_prefix)
  tokenizer.add_tokens(_added_tokens(proto))
  return tokenizer


def _check_convertible(proto, path: str) -> None:
  if proto.trainer_spec.model_type not in (_BPE, _UNIGRAM):
    raise SentencePieceConversionError(
        f'{path}: SentencePiece model type {proto.trainer_spec.model_type} (only BPE and unigram '
        'models convert to a tokenizer.json).')
  if proto.trainer_spec.treat_whitespace_as_suffix:
    raise SentencePieceConversionError(
        f'{path}: treat_whitespace_as_suffix is set; the conversion writes whitespace as a '
        'prefix, as SentencePiece does by default.')


def _bpe_merges(proto) -> List[Tuple[str, str]]:
  """Every split of a normal piece into two pieces of the vocabulary, best joined score first
  (SentencePiece's BPE merges the pair whose joined piece scores highest)."""
  ids: Dict[str, int] = {p.piece: i for i, p in enumerate(proto.pieces)}
  merges = []
  for merged_id, piece in enumerate(proto.pieces):
    if piece.type != _NORMAL:
      continue
    text = piece.piece
    for cut in range(1, len(text)):
      left, right = text[:cut], text[cut:]
      if left in ids and right in ids:
        merges.append((-piece.score, merged_id, ids[left], ids[right], left, right))
  merges.sort()
  return [(left, right) for *_, left, right in merges]


def _normalizer(spec) -> normalizers.Normalizer:
  steps = []
  if spec.precompiled_charsmap:
    steps.append(normalizers.Precompiled(spec.precompiled_charsmap))
  if spec.remove_extra_whitespaces:
    steps += [normalizers.Strip(left=True, right=True), normalizers.Replace(Regex(' {2,}'), ' ')]
  return normalizers.Sequence(steps)


def _decoder(dummy_prefix: bool) -> decoders.Decoder:
  steps = [decoders.Replace(SPACE, ' '), decoders.ByteFallback(), decoders.Fuse()]
  if dummy_prefix:
    steps.append(decoders.Strip(' ', 1, 0))
  return decoders.Sequence(steps)


def _added_tokens(proto) -> List[tokenizers.AddedToken]:
  """Control and unknown pieces as special tokens, user-defined ones as normalised tokens."""
  added = []
  for piece in proto.pieces:
    if piece.type in (_CONTROL, _UNKNOWN):
      added.append(tokenizers.AddedToken(piece.piece, special=True, normalized=False))
    elif piece.type == _USER_DEFINED:
      added.append(tokenizers.AddedToken(piece.piece, special=False, normalized=True))
  return added
