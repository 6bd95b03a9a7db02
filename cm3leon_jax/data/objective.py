"""The CM3 causal-masked objective (CM3, arXiv 2201.07520, section 2, with CM3Leon's changes, arXiv
2309.02591, section 2.2), on one example at a time, in numpy. Choices the papers leave open are
listed in docs/method.md.

An example is a 1-D array of token ids: documents joined by <eos>, each document e.g.
``text <break> image`` or ``image <break> text``. ``rearrange`` masks n spans of it:

  input   a b c <break> i i i i <eos> d e f
  output  a <s0> c <break> i i i i <eos> d <s1> <infill> <s0> b <eoss> <s1> e f <eoss>

* Units: a maximal run of image codes is one atomic unit (an image is masked whole or not at all);
  every other token, except the boundary tokens <break> and <eos>, is a unit of its own.
* Segments: maximal runs of units between boundary tokens. A span is a non-empty run of units inside
  one segment, so it never contains or crosses <break> or <eos> (CM3Leon's change to CM3: the model
  never learns to start an image mid-way).
* n = clamp(Poisson(poisson_rate), 1, max_spans), reduced to what the example can hold; the spans
  are placed uniformly over all valid configurations (non-empty, non-overlapping, never adjacent).
  With ``image_weight='tokens'`` (the default) an image counts as the C(T + 1, 2) token spans
  of its T tokens, all snapped to the whole image: span ends are uniform over the document's
  tokens, as in CM3, so a 1024-token image is masked far more often than a 20-token caption.
  ``image_weight='unit'`` counts an image as a single one-unit span instead.
* ``whole_text_rate`` (off by default) makes one of the n spans a whole caption, so the model learns
  the ``<mask> <break> image`` context that guidance and captioning prompt it with.
* Loss weight 0 on the in-place sentinels (they say only that something was cut out there).
"""

import dataclasses
import functools
import math
from typing import List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

SENTINEL_STYLES = ('enumerated', 'mask')
IMAGE_WEIGHTS = ('tokens', 'unit')

# Token classes of the lookup table CM3Tokens.classes.
_UNIT, _BOUNDARY, _IMAGE, _RESERVED = 0, 1, 2, 3


@dataclasses.dataclass(frozen=True)
class CM3Tokens:
  """The token ids the objective needs.

  Attributes:
    boundary_ids: <break> and <eos>; spans never contain or cross these.
    sentinel_ids: <sentinel:0>, <sentinel:1>, ... (the 'enumerated' style needs max_spans of them).
    mask_id: <mask> (the 'mask' style's sentinel).
    infill_id: <infill>, between the body and the moved spans.
    eoss_id: <eoss>, ending each moved span.
    first_image_id: id of image code 0.
    num_image_codes: image ids are [first_image_id, first_image_id + num_image_codes).
  """

  boundary_ids: Tuple[int, ...]
  sentinel_ids: Tuple[int, ...]
  mask_id: int
  infill_id: int
  eoss_id: int
  first_image_id: int
  num_image_codes: int

  def __post_init__(self):
    object.__setattr__(self, 'boundary_ids', tuple(int(i) for i in self.boundary_ids))
    object.__setattr__(self, 'sentinel_ids', tuple(int(i) for i in self.sentinel_ids))
    if not self.boundary_ids:
      raise ValueError('CM3Tokens needs at least one boundary id (<break>, <eos>).')
    if self.num_image_codes <= 0:
      raise ValueError(f'CM3Tokens needs num_image_codes > 0; got {self.num_image_codes}.')
    specials = self.boundary_ids + self.reserved_ids
    if len(set(specials)) != len(specials):
      raise ValueError(f'CM3Tokens ids must be distinct; got {self}.')
    if min(specials) < 0:
      raise ValueError(f'CM3Tokens ids must be non-negative; got {self}.')
    image_end = self.first_image_id + self.num_image_codes
    if any(self.first_image_id <= i < image_end for i in specials):
      raise ValueError(f'CM3Tokens special ids must lie outside the image ids '
                       f'[{self.first_image_id}, {image_end}); got {self}.')

  @classmethod
  def from_vocabulary(cls, vocab) -> 'CM3Tokens':
    """The ids of a ``MultimodalVocabulary`` (its eos is the text vocabulary's)."""
    num_sentinels = sum(name.startswith('<sentinel:') for name in vocab.special_names)
    return cls(boundary_ids=(vocab.break_id, vocab.eos_id),
               sentinel_ids=tuple(vocab.sentinel_id(i) for i in range(num_sentinels)),
               mask_id=vocab.mask_id, infill_id=vocab.infill_id, eoss_id=vocab.eoss_id,
               first_image_id=vocab.first_image_id, num_image_codes=vocab.num_image_codes)

  @property
  def reserved_ids(self) -> Tuple[int, ...]:
    """Ids the objective inserts, which therefore may not occur in its input."""
    return (self.mask_id, self.infill_id, self.eoss_id) + self.sentinel_ids

  @functools.cached_property
  def classes(self) -> np.ndarray:
    """int8 class (_UNIT, _BOUNDARY, _IMAGE, _RESERVED) of every id up to the largest one named.

    Ids above the table are ordinary units: look them up clipped to the last entry, which is one.
    """
    image_end = self.first_image_id + self.num_image_codes
    table = np.full(max(max(self.boundary_ids + self.reserved_ids) + 1, image_end) + 1, _UNIT,
                    np.int8)
    table[self.first_image_id:image_end] = _IMAGE
    table[list(self.boundary_ids)] = _BOUNDARY
    table[list(self.reserved_ids)] = _RESERVED
    return table


@dataclasses.dataclass(frozen=True)
class CM3Config:
  """How many spans to mask and how to mark them.

  Attributes:
    poisson_rate: n ~ Poisson(poisson_rate), clamped to [1, max_spans] (CM3: rate 1, at most 16).
    max_spans: the most spans one example gets.
    sentinel_style: 'enumerated': span i is marked <sentinel:i> in the body and before the moved
      span; 'mask': every span is marked <mask> in both places, matched by order.
    image_weight: 'tokens': an image segment weighs as many configurations as the token spans
      inside it (uniform span ends over tokens); 'unit': it weighs one, like a single text token.
    whole_text_rate: chance that one of an example's n spans is a whole text segment (a whole
      caption), chosen uniformly among its text segments; the other n - 1 follow the law above.
      0 is the papers' law, under which a 12-token caption beside a 64-token image is masked whole
      about once in 3,000 documents, so the model barely sees the `<mask> <break> image` context
      that classifier-free guidance's unconditional stream and the captioning prompt use.
  """

  poisson_rate: float = 1.0
  max_spans: int = 16
  sentinel_style: str = 'enumerated'
  image_weight: str = 'tokens'
  whole_text_rate: float = 0.0

  def __post_init__(self):
    if not (isinstance(self.poisson_rate, (int, float)) and math.isfinite(self.poisson_rate) and
            self.poisson_rate >= 0):
      raise ValueError(f'CM3Config.poisson_rate must be a finite number >= 0; got '
                       f'{self.poisson_rate!r}.')
    if isinstance(self.max_spans, bool) or not isinstance(self.max_spans, int) or \
        self.max_spans < 1:
      raise ValueError(f'CM3Config.max_spans must be an int >= 1; got {self.max_spans!r}.')
    if not (isinstance(self.whole_text_rate, (int, float)) and
            0.0 <= self.whole_text_rate <= 1.0):
      raise ValueError(f'CM3Config.whole_text_rate must lie in [0, 1]; got '
                       f'{self.whole_text_rate!r}.')
    if self.image_weight not in IMAGE_WEIGHTS:
      raise ValueError(f'CM3Config.image_weight must be one of {IMAGE_WEIGHTS}; got '
                       f'{self.image_weight!r}.')
    if self.sentinel_style not in SENTINEL_STYLES:
      raise ValueError(f'CM3Config.sentinel_style must be one of {SENTINEL_STYLES}; got '
                       f'{self.sentinel_style!r}.')


class Span(NamedTuple):
  """A masked span: tokens [start, end) of the input (whole units of one segment)."""

  start: int
  end: int


class Units(NamedTuple):
  """An example cut into units and segments (see the module docstring).

  Attributes:
    classes: int8 [len(tokens)], each token's class (_UNIT, _BOUNDARY, _IMAGE, _RESERVED).
    starts: [units] token offset where each unit starts.
    ends: [units] token offset where each unit ends (exclusive).
    segment_offsets: [segments] index (into starts / ends) of each segment's first unit.
    segment_sizes: [segments] units in each segment.
  """

  classes: np.ndarray
  starts: np.ndarray
  ends: np.ndarray
  segment_offsets: np.ndarray
  segment_sizes: np.ndarray


class CM3Result(NamedTuple):
  """One rearranged example.

  Attributes:
    tokens: int32 [len(input) + extra_tokens(n)], the rearranged sequence.
    loss_weights: int32, like tokens: 0 at the in-place sentinels; elsewhere 1, or, given the
      input's own weights, each token's weight, a moved span's sentinel and <eoss> weighing as the
      most its tokens weigh and <infill> as the most any input token weighs.
    spans: the n masked spans (Span(start, end) token offsets into the input), left to right.
    num_spans_drawn: n as drawn, before it was reduced to what the example can hold.
  """

  tokens: np.ndarray
  loss_weights: np.ndarray
  spans: List[Span]
  num_spans_drawn: int


def extra_tokens(num_spans: int) -> int:
  """How much longer rearranging makes an example with n spans: exactly 1 + 3n.

  <infill> is one token; each span adds its in-place sentinel, its second sentinel and <eoss> (its
  own tokens move, they are neither dropped nor duplicated). n = 0 adds nothing (no <infill>).
  """
  return 1 + 3 * num_spans if num_spans else 0


def span_count_probabilities(rate: float, max_spans: int) -> np.ndarray:
  """P(n) for n = 0..max_spans, where n = clamp(Poisson(rate), 1, max_spans); P(0) = 0."""
  CM3Config(poisson_rate=rate, max_spans=max_spans)  # validates both
  poisson = np.zeros(max_spans)  # P(X = k) for k < max_spans; Poisson(0) is always 0
  poisson[0] = 1.0
  if rate > 0:
    poisson = np.exp([k * math.log(rate) - rate - math.lgamma(k + 1) for k in range(max_spans)])
  probs = np.zeros(max_spans + 1)
  probs[1:max_spans] = poisson[1:]
  probs[1] += poisson[0]
  # The clamped tail P(X >= max_spans), as one minus the rest so that the total is 1.
  probs[max_spans] = max(0.0, 1.0 - probs[:max_spans].sum())
  return probs


def _units(tokens: np.ndarray, ids: CM3Tokens) -> Units:
  """The example's token classes, units and segments."""
  classes = ids.classes[np.minimum(tokens, len(ids.classes) - 1)]
  boundary = classes == _BOUNDARY
  image = classes == _IMAGE
  continues_image = np.zeros_like(image)
  continues_image[1:] = image[1:] & image[:-1]
  unit_start = ~boundary & ~continues_image
  # A unit ends where the next unit or boundary token begins (or at the end).
  cuts = np.append(np.flatnonzero(unit_start | boundary), len(tokens))
  is_unit = np.flatnonzero(unit_start[cuts[:-1]])
  starts, ends = cuts[is_unit], cuts[is_unit + 1]
  segment_of_unit = np.cumsum(boundary)[starts]
  segment_offsets = np.flatnonzero(np.diff(segment_of_unit, prepend=-1))
  segment_sizes = np.diff(segment_offsets, append=len(starts))
  return Units(classes, starts, ends, segment_offsets, segment_sizes)


def _configurations(size: int, image_tokens: int, n: int) -> List[int]:
  """Ways to place k = 0, 1, ... spans in a segment of `size` units (2k of its size + 1 cut points).

  A segment that is one image of `image_tokens` tokens (0 otherwise, or with image_weight='unit')
  holds one span at most, weighted as its C(T + 1, 2) token spans.
  """
  if image_tokens:
    return [1, math.comb(image_tokens + 1, 2)][:n + 1]
  return [math.comb(size + 1, 2 * k) for k in range(min((size + 1) // 2, n) + 1)]


def _sample_segment_counts(coefficients: Sequence[Sequence[int]], n: int,
                           rng: np.random.Generator) -> List[int]:
  """Spans per segment, k_i summing to n, with P(k) proportional to prod_i coefficients[i][k_i].

  With coefficients C(m_i + 1, 2 k_i) that is the share of the uniform distribution over
  configurations (2 k_i of a segment's m_i + 1 cut points) that puts k_i spans in segment i.
  Dynamic programming over segments in exact Python ints (C(4097, 32) overflows nothing).
  """
  if len(coefficients) == 1:
    return [n]
  # ways[i][j]: configurations of j spans over segments i, i + 1, ...
  ways = [None] * len(coefficients) + [[1] + [0] * n]
  for i in reversed(range(len(coefficients))):
    after = ways[i + 1]
    ways[i] = [sum(c * after[j - k] for k, c in enumerate(coefficients[i][:j + 1]))
               for j in range(n + 1)]
  counts, left = [], n
  for i, coefficient in enumerate(coefficients[:-1]):
    if left == 0:
      counts.append(0)
      continue
    total, draw, chosen = ways[i][left], rng.random(), None
    for k, c in enumerate(coefficient[:left + 1]):
      weight = c * ways[i + 1][left - k]
      if weight:
        chosen = k  # the last feasible k, should rounding leave the draw just above the sum
        draw -= weight / total
        if draw < 0:
          break
    counts.append(chosen)
    left -= chosen
  return counts + [left]


def _sentinels(num_spans: int, ids: CM3Tokens, config: CM3Config) -> np.ndarray:
  if config.sentinel_style == 'mask':
    return np.full(num_spans, ids.mask_id, np.int32)
  return np.asarray(ids.sentinel_ids[:num_spans], np.int32)


def _as_example(tokens) -> np.ndarray:
  tokens = np.asarray(tokens)
  if tokens.ndim != 1 or not (tokens.size == 0 or np.issubdtype(tokens.dtype, np.integer)):
    raise ValueError(f'Expected a 1-D integer token array; got shape {tokens.shape}, dtype '
                     f'{tokens.dtype}.')
  if tokens.size and tokens.min() < 0:
    raise ValueError('Token ids must be non-negative.')
  return tokens.astype(np.int32, copy=False)


def draw_span_count(rng: np.random.Generator, config: CM3Config) -> int:
  """n = clamp(Poisson(poisson_rate), 1, max_spans): draw it first to budget an example's length."""
  return min(max(int(rng.poisson(config.poisson_rate)), 1), config.max_spans)


def _image_segment_tokens(units: Units, config: CM3Config) -> List[int]:
  """Per segment: its token count if it is one image (and images weigh by tokens), else 0."""
  if config.image_weight == 'unit':
    return [0] * len(units.segment_sizes)
  first_units = units.starts[units.segment_offsets]
  is_image = (units.segment_sizes == 1) & (units.classes[first_units] == _IMAGE)
  return np.where(is_image, units.ends[units.segment_offsets] - first_units, 0).tolist()


def _whole_text_segment(units: Units, rng: np.random.Generator,
                        config: CM3Config) -> Optional[int]:
  """The text segment masked whole (with chance whole_text_rate), or None.

  Draws from `rng` only when whole_text_rate > 0, so the default law's draws are unchanged.
  """
  if not config.whole_text_rate:
    return None
  text_segments = np.flatnonzero(units.classes[units.starts[units.segment_offsets]] != _IMAGE)
  if rng.random() >= config.whole_text_rate or not text_segments.size:
    return None
  return int(rng.choice(text_segments))


def rearrange(tokens, rng: np.random.Generator, tokens_ids: CM3Tokens,
              config: CM3Config, num_spans: Optional[int] = None,
              token_weights: Optional[np.ndarray] = None) -> CM3Result:
  """Mask spans of one example and move them to its end (the CM3 objective).

  Args:
    tokens: 1-D ids, documents joined by <eos> (no trailing <eos>; the caller appends it). They
      must not contain the ids the objective inserts (tokens_ids.reserved_ids).
    rng: the only source of randomness; a seeded generator gives a deterministic result.
    tokens_ids: the special ids.
    config: span count and sentinel style.
    num_spans: use this n (as drawn by `draw_span_count`) instead of drawing one.
    token_weights: 0/1 loss weights of the input tokens (0 on an instruction's prompt when the
      loss covers outputs only); default all 1. They move with their tokens.

  Returns:
    CM3Result: body + <infill> + (sentinel_i, span_i, <eoss>) for each span i left to right, where
    the body is the input with each span replaced in place by its sentinel. An example without
    units (empty, or boundary tokens only) comes back unchanged, with 0 spans.
  """
  tokens = _as_example(tokens)
  base = np.ones(len(tokens), np.int32) if token_weights is None else np.asarray(
      token_weights, np.int32)
  if base.shape != tokens.shape:
    raise ValueError(f'token_weights has shape {base.shape}, the tokens {tokens.shape}.')
  if config.sentinel_style == 'enumerated' and len(tokens_ids.sentinel_ids) < config.max_spans:
    raise ValueError(f'max_spans={config.max_spans} needs as many sentinel ids; CM3Tokens has '
                     f'{len(tokens_ids.sentinel_ids)}.')
  units = _units(tokens, tokens_ids)
  if (units.classes == _RESERVED).any():
    raise ValueError('rearrange() input contains ids the objective inserts (<mask>, <infill>, '
                     '<eoss> or a sentinel); restore() could not invert it.')
  drawn = draw_span_count(rng, config) if num_spans is None else int(num_spans)
  capacity = (units.segment_sizes + 1) // 2
  n = min(drawn, int(capacity.sum()))
  if n == 0:
    return CM3Result(tokens.copy(), base.copy(), [], drawn)
  whole = _whole_text_segment(units, rng, config)
  if whole is not None:
    n = min(drawn, 1 + int(capacity.sum() - capacity[whole]))
  image_tokens = _image_segment_tokens(units, config)
  sizes = units.segment_sizes.tolist()
  coefficients = [[1] if i == whole else _configurations(m, t, n)
                  for i, (m, t) in enumerate(zip(sizes, image_tokens))]
  cut_units = []
  counts = _sample_segment_counts(coefficients, n - (whole is not None), rng)
  for i, (offset, size, k) in enumerate(zip(units.segment_offsets.tolist(), sizes, counts)):
    if i == whole:
      cut_units.append(np.array([offset, offset + size]))
    elif k:
      cut_units.append(np.sort(rng.choice(size + 1, 2 * k, replace=False)) + offset)
  cut_units = np.concatenate(cut_units)
  span_starts, span_ends = units.starts[cut_units[0::2]], units.ends[cut_units[1::2] - 1]
  return _assemble(tokens, span_starts, span_ends, _sentinels(n, tokens_ids, config),
                   tokens_ids, drawn, base)


def _assemble(tokens, span_starts, span_ends, sentinels, ids, drawn, base) -> CM3Result:
  """Lay out body, <infill> and moved spans with one gather from [tokens, sentinels, markers]."""
  n, length = len(span_starts), len(tokens)
  source = np.concatenate([tokens, sentinels, np.array([ids.infill_id, ids.eoss_id], np.int32)])
  infill, eoss = length + n, length + n + 1
  pieces, after = [], 0
  for i, (start, end) in enumerate(zip(span_starts.tolist(), span_ends.tolist())):
    pieces += [np.arange(after, start), [length + i]]
    after = end
  pieces += [np.arange(after, length), [infill]]
  for i, (start, end) in enumerate(zip(span_starts.tolist(), span_ends.tolist())):
    pieces += [[length + i], np.arange(start, end), [eoss]]
  gather = np.concatenate(pieces).astype(np.intp)
  output = source[gather]
  span_weights = [int(base[start:end].max()) for start, end in zip(span_starts, span_ends)]
  source_weights = np.concatenate([base, span_weights, [base.max(), 0]]).astype(np.int32)
  weights = source_weights[gather]
  # Each span's <eoss> weighs as its span (the gather gives every <eoss> the same source slot).
  weights[output == ids.eoss_id] = span_weights
  masked_before = np.cumsum(span_ends - span_starts) - (span_ends - span_starts)
  weights[span_starts - masked_before + np.arange(n)] = 0
  spans = [Span(start, end) for start, end in zip(span_starts.tolist(), span_ends.tolist())]
  return CM3Result(output, weights, spans, drawn)


def restore(rearranged_tokens, tokens_ids: CM3Tokens, config: CM3Config) -> np.ndarray:
  """The input ``rearrange`` was given: the moved spans put back in place of their sentinels.

  A sequence with no <infill>, sentinel or <eoss> is its own rearrangement (nothing was masked)
  and comes back unchanged.

  Raises:
    ValueError: if the sequence is not a rearrangement: several <infill>s, a sentinel without its
      span or a span without its sentinel, a missing <eoss>, an empty span, a span holding a
      boundary token, or (enumerated style) sentinels out of order.
  """
  tokens = _as_example(rearranged_tokens)
  classes = tokens_ids.classes[np.minimum(tokens, len(tokens_ids.classes) - 1)]
  reserved = np.flatnonzero(classes == _RESERVED)
  if not len(reserved):
    return tokens.copy()
  infills = reserved[tokens[reserved] == tokens_ids.infill_id]
  if len(infills) != 1:
    raise ValueError(f'restore() needs exactly one <infill> when anything is masked; found '
                     f'{len(infills)}.')
  infill = int(infills[0])
  in_body, in_tail = reserved[reserved < infill], reserved[reserved > infill]
  n = len(in_body)
  if n == 0:
    raise ValueError('restore(): <infill> without any sentinel before it.')
  expected = _sentinels(n, tokens_ids, config)
  if not np.array_equal(tokens[in_body], expected):
    raise ValueError(f'restore(): the body must mark its {n} spans with {expected.tolist()} in '
                     f'order; it has {tokens[in_body].tolist()}.')
  # The tail is exactly (sentinel_i, span_i, <eoss>) for i < n, starting right after <infill>.
  markers, eosses = in_tail[0::2], in_tail[1::2]
  if (len(in_tail) != 2 * n or not np.array_equal(tokens[markers], expected) or
      (tokens[eosses] != tokens_ids.eoss_id).any()):
    raise ValueError(f'restore(): after <infill> expected {n} times (sentinel, span, <eoss>) with '
                     f'sentinels {expected.tolist()}; got special tokens '
                     f'{tokens[in_tail].tolist()}.')
  if markers[0] != infill + 1 or eosses[-1] != len(tokens) - 1 or \
      (markers[1:] != eosses[:-1] + 1).any():
    raise ValueError('restore(): tokens outside a (sentinel, span, <eoss>) group after <infill>, '
                     'or a missing <eoss>.')
  if (eosses - markers < 2).any():
    raise ValueError('restore(): an empty span (a sentinel directly followed by <eoss>).')
  if (classes[infill:] == _BOUNDARY).any():
    raise ValueError('restore(): a moved span contains a boundary token (<break> or <eos>).')
  pieces, after = [], 0
  for body_sentinel, marker, eoss in zip(in_body.tolist(), markers.tolist(), eosses.tolist()):
    pieces += [tokens[after:body_sentinel], tokens[marker + 1:eoss]]
    after = body_sentinel + 1
  pieces.append(tokens[after:infill])
  return np.concatenate(pieces)


def infilling_prompt(tokens, span: Span, tokens_ids: CM3Tokens,
                     config: CM3Config) -> np.ndarray:
  """The prompt whose continuation fills ``tokens[start:end]``: a one-span rearrangement, cut short.

  The prompt is body (`span`, a Span or any (start, end) pair, replaced by sentinel 0) + <infill>
  + sentinel 0; a model trained with CM3 continues with the span's tokens and <eoss>. E.g. captioning: tokens = ``text <break> image``,
  span = the text; text-to-image infilling: span = the image.

  Raises:
    ValueError: if the span is empty, out of range, holds a boundary token or cuts an image.
  """
  tokens = _as_example(tokens)
  start, end = (int(i) for i in span)
  if not 0 <= start < end <= len(tokens):
    raise ValueError(f'infilling_prompt(): span {span} is not a non-empty range of the '
                     f'{len(tokens)} tokens.')
  units = _units(tokens, tokens_ids)
  if (units.classes == _RESERVED).any():
    raise ValueError('infilling_prompt(): tokens contain ids the objective inserts.')
  if (units.classes[start:end] == _BOUNDARY).any():
    raise ValueError(f'infilling_prompt(): span {span} contains a boundary token.')
  if start not in set(units.starts.tolist()) or end not in set(units.ends.tolist()):
    raise ValueError(f'infilling_prompt(): span {span} cuts an image (images are masked whole).')
  sentinel = _sentinels(1, tokens_ids, config)
  return np.concatenate([tokens[:start], sentinel, tokens[end:], [tokens_ids.infill_id], sentinel]
                        ).astype(np.int32)
