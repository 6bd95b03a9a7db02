"""Training-example assembly: retrieved documents, then the query, then the CM3 rearrangement.

  example = retrieved_1 <eos> retrieved_2 <eos> query        (documents in store order)
  tokens  = CM3(example) <eos>                               (loss weight 0 on in-place sentinels)

A document is ``text <break> image`` (or ``image <break> text`` with probability
``image_first_probability``, drawn per document). The example must fit ``max_length`` including the
CM3 growth and the final <eos>, so the span count is drawn first and the rules are, in order:
an image is never cut; retrieved documents that do not fit are dropped (the query always stays);
a query that alone is too long loses the end of its text; a query whose image alone does not fit
gives no example (the seqio task filters it out). Retrieved documents carry the same loss weight as
the query (CM3Leon's choice; RA-CM3 used 0.1).

An instruction document (supervised fine-tuning) is its parts joined by <break> in their stored
order (``data.sft_templates``), never cut: one that does not fit gives no example. With
``loss_on='outputs'`` its output parts move after the prompt and only they (and the <break> before
each) carry loss, retrieved documents none; with ``'all'`` (CM3Leon's choice) every token does.
"""

import dataclasses
from typing import Optional, Sequence, Tuple

import gin
import numpy as np

from cm3leon_jax.data import objective
from cm3leon_jax.data import sft_templates

# A document as the store keeps it: (text ids, raw image codes); either may be empty.
DocumentTokens = Tuple[np.ndarray, np.ndarray]
LOSS_ON = ('all', 'outputs')


@dataclasses.dataclass(frozen=True)
class PartsTokens:
  """An instruction document's parts as the store keeps them (see store.DocumentPart)."""

  is_image: Sequence[bool]
  outputs: Sequence[bool]
  joined: Sequence[bool]
  ids: Sequence[np.ndarray]  # Text ids, or raw image codes.

  def __len__(self) -> int:
    return len(self.ids)


@gin.configurable
@dataclasses.dataclass(frozen=True)
class AssemblyConfig:
  """How documents become one training example.

  Attributes:
    num_retrieved: at most this many retrieved documents go before the query (CM3Leon: 2).
    image_first_probability: chance that a document is laid out ``image <break> text``.
    masking_rate: chance that an example gets the CM3 rearrangement; otherwise it stays a plain
      left-to-right sequence (the papers mask every document: 1.0).
    cm3: span count law, sentinel style and image weighting of the CM3 objective.
    loss_on: 'all' tokens (CM3Leon's SFT) or the 'outputs' of instruction documents only
      (Chameleon's prompt masking); documents without parts always train on every token.
  """

  num_retrieved: int = 2
  image_first_probability: float = 0.0
  masking_rate: float = 1.0
  cm3: objective.CM3Config = objective.CM3Config()
  loss_on: str = 'all'

  def __post_init__(self):
    if self.loss_on not in LOSS_ON:
      raise ValueError(f'AssemblyConfig.loss_on must be one of {LOSS_ON}, got {self.loss_on!r}.')
    if self.num_retrieved < 0:
      raise ValueError(f'AssemblyConfig.num_retrieved must be >= 0, got {self.num_retrieved}.')
    for name in ('image_first_probability', 'masking_rate'):
      if not 0.0 <= getattr(self, name) <= 1.0:
        raise ValueError(f'AssemblyConfig.{name} must lie in [0, 1], got {getattr(self, name)}.')


@dataclasses.dataclass(frozen=True)
class TokenLayout:
  """The ids assembly needs besides the objective's: <eos>, <break> and image code 0."""

  eos_id: int
  break_id: int
  first_image_id: int
  cm3: objective.CM3Tokens

  @classmethod
  def from_vocabulary(cls, vocab) -> 'TokenLayout':
    return cls(vocab.eos_id, vocab.break_id, vocab.first_image_id,
               objective.CM3Tokens.from_vocabulary(vocab))


def document_tokens(document: DocumentTokens, image_first: bool, layout: TokenLayout,
                    max_text: Optional[int] = None) -> np.ndarray:
  """Ids of one document, its text cut to `max_text` tokens when given."""
  text = np.asarray(document[0], np.int32)[:max_text]
  image = np.asarray(document[1], np.int32) + layout.first_image_id
  parts = [p for p in ((image, text) if image_first else (text, image)) if p.size]
  if len(parts) == 2:
    parts.insert(1, np.array([layout.break_id], np.int32))
  return np.concatenate(parts) if parts else np.zeros(0, np.int32)


def _fit_query(query: DocumentTokens, image_first: bool, budget: int,
               layout: TokenLayout) -> Optional[np.ndarray]:
  """The query's tokens within `budget`, cutting only its text; None if its image cannot fit."""
  tokens = document_tokens(query, image_first, layout)
  if len(tokens) <= budget:
    return tokens
  image_length = np.size(query[1])
  text_room = budget - image_length - (1 if image_length else 0)
  if image_length > budget:
    return None
  if text_room <= 0:
    return document_tokens((np.zeros(0, np.int32), query[1]), image_first, layout)
  return document_tokens(query, image_first, layout, max_text=text_room)


def parts_tokens(parts: PartsTokens, layout: TokenLayout,
                 outputs_only: bool) -> Tuple[np.ndarray, np.ndarray]:
  """(ids, 0/1 loss weights) of an instruction document: parts joined by <break>."""
  order = range(len(parts))
  if outputs_only:
    order = sft_templates.output_order(parts.outputs, parts.joined)
  tokens, weights = [], []
  for position, index in enumerate(order):
    weight = 1 if parts.outputs[index] or not outputs_only else 0
    if position and not (parts.joined[index] and not parts.is_image[index]):
      tokens.append(np.array([layout.break_id], np.int32))
      weights.append(np.array([weight], np.int32))
    ids = np.asarray(parts.ids[index], np.int32)
    tokens.append(ids + layout.first_image_id if parts.is_image[index] else ids)
    weights.append(np.full(len(ids), weight, np.int32))
  if not tokens:
    return np.zeros(0, np.int32), np.zeros(0, np.int32)
  return np.concatenate(tokens), np.concatenate(weights)


def _query(query, image_first: bool, budget: int, layout: TokenLayout,
           outputs_only: bool) -> Optional[Tuple[np.ndarray, np.ndarray]]:
  """The query's (ids, weights) within `budget`, or None when it cannot fit."""
  if isinstance(query, PartsTokens) and len(query):
    tokens, weights = parts_tokens(query, layout, outputs_only)
    return (tokens, weights) if len(tokens) <= budget else None
  if isinstance(query, PartsTokens):
    raise ValueError('An instruction document needs at least one part.')
  tokens = _fit_query(query, image_first, budget, layout)
  return None if tokens is None else (tokens, np.ones(len(tokens), np.int32))


def assemble(query: DocumentTokens, retrieved: Sequence[DocumentTokens], max_length: int,
             rng: np.random.Generator, layout: TokenLayout,
             config: AssemblyConfig) -> Optional[Tuple[np.ndarray, np.ndarray]]:
  """One training example: (int32 tokens ending in <eos>, int32 loss weights), or None.

  Args:
    query: the document being trained on: (text ids, raw image codes), or an instruction
      document's PartsTokens.
    retrieved: its neighbours, most relevant first (only the first num_retrieved are used).
    max_length: the example's length limit (TASK_FEATURE_LENGTHS['targets']).
    rng: all randomness (orders, span count, span placement).
    layout: special ids.
    config: see AssemblyConfig.
  """
  masked = rng.random() < config.masking_rate
  num_spans = objective.draw_span_count(rng, config.cm3) if masked else 0
  budget = max_length - 1 - objective.extra_tokens(num_spans)
  image_first = lambda: rng.random() < config.image_first_probability
  outputs_only = config.loss_on == 'outputs' and isinstance(query, PartsTokens)
  fitted = _query(query, image_first(), budget, layout, outputs_only)
  if fitted is None:
    return None
  pieces, piece_weights, used = [], [], len(fitted[0])
  for document in list(retrieved)[:config.num_retrieved]:
    tokens = document_tokens(document, image_first(), layout)
    if tokens.size and used + len(tokens) + 1 <= budget:
      pieces += [tokens, np.array([layout.eos_id], np.int32)]
      piece_weights.append(np.full(len(tokens) + 1, 0 if outputs_only else 1, np.int32))
      used += len(tokens) + 1
  example = np.concatenate(pieces + [fitted[0]]).astype(np.int32)
  example_weights = np.concatenate(piece_weights + [fitted[1]]).astype(np.int32)
  if masked and example.size:
    result = objective.rearrange(example, rng, layout.cm3, config.cm3, num_spans=num_spans,
                                 token_weights=example_weights)
    tokens, weights = result.tokens, result.loss_weights
  else:
    tokens, weights = example, example_weights
  return (np.append(tokens, layout.eos_id).astype(np.int32),
          np.append(weights, 1).astype(np.int32))
