"""The CM3 objective: span-count law, boundaries, uniform placement, inversion, loss weights."""

import itertools

import numpy as np
import pytest
from scipy import stats

from cm3leon_jax.data.objective import (CM3Config, CM3Tokens, extra_tokens, infilling_prompt,
                                   rearrange, restore, span_count_probabilities)

# A tiny id layout: text [2, 100), eos 1, specials [100, 120), image codes [120, 184).
EOS, BREAK, INFILL, EOSS, MASK = 1, 100, 101, 102, 103
SENTINELS = tuple(range(104, 120))
FIRST_IMAGE, NUM_CODES = 120, 64
IDS = CM3Tokens(boundary_ids=(BREAK, EOS), sentinel_ids=SENTINELS, mask_id=MASK,
                infill_id=INFILL, eoss_id=EOSS, first_image_id=FIRST_IMAGE,
                num_image_codes=NUM_CODES)
STYLES = ('enumerated', 'mask')
NUM_EXAMPLES = 10_000


def is_image(tokens):
  return (tokens >= FIRST_IMAGE) & (tokens < FIRST_IMAGE + NUM_CODES)


def make_example(rng):
  """1-3 documents joined by <eos>, each `text <break> image` or `image <break> text`."""
  documents = []
  for _ in range(rng.integers(1, 4)):
    text = rng.integers(2, 100, rng.integers(32, 81))
    image = rng.integers(FIRST_IMAGE, FIRST_IMAGE + NUM_CODES, 16)
    parts = [text, [BREAK], image] if rng.random() < 0.5 else [image, [BREAK], text]
    documents.append(np.concatenate(parts))
  joined = [piece for document in documents for piece in (document, [EOS])][:-1]
  return np.concatenate(joined).astype(np.int32)


@pytest.fixture(scope='module')
def examples():
  rng = np.random.default_rng(0)
  return [make_example(rng) for _ in range(NUM_EXAMPLES)]


@pytest.fixture(scope='module', params=STYLES)
def rearranged(request, examples):
  config = CM3Config(sentinel_style=request.param)
  rng = np.random.default_rng(1)
  return config, [rearrange(x, rng, IDS, config) for x in examples]


def chi_square_p(observed, probs):
  """Chi-square p-value of observed counts against probs, adjacent bins merged to expected >= 5."""
  expected = np.asarray(probs) * np.sum(observed)
  merged_observed, merged_expected, o, e = [], [], 0.0, 0.0
  for observed_count, expected_count in zip(observed, expected):
    o, e = o + observed_count, e + expected_count
    if e >= 5:
      merged_observed.append(o)
      merged_expected.append(e)
      o, e = 0.0, 0.0
  merged_observed[-1] += o
  merged_expected[-1] += e
  return stats.chisquare(merged_observed, merged_expected).pvalue


def span_count_histogram(results):
  assert all(len(r.spans) == r.num_spans_drawn for r in results), 'the capacity clamp applied'
  return np.bincount([len(r.spans) for r in results], minlength=17)


def test_span_counts_follow_the_clamped_poisson_law(rearranged):
  _, results = rearranged
  observed = span_count_histogram(results)
  assert len(observed) == 17 and observed[0] == 0
  assert chi_square_p(observed[1:], span_count_probabilities(1.0, 16)[1:]) > 1e-3


def test_span_count_check_rejects_a_wrong_law(rearranged):
  _, results = rearranged
  observed = span_count_histogram(results)
  assert chi_square_p(observed[1:], span_count_probabilities(2.0, 16)[1:]) < 1e-3


def test_span_count_probabilities():
  probs = span_count_probabilities(1.0, 16)
  assert probs.shape == (17,) and probs[0] == 0
  np.testing.assert_allclose(probs.sum(), 1.0)
  np.testing.assert_allclose(probs[1], 2 / np.e)  # P(X = 0) + P(X = 1)
  np.testing.assert_allclose(probs[2:16], stats.poisson.pmf(np.arange(2, 16), 1.0))
  np.testing.assert_allclose(probs[16], stats.poisson.sf(15, 1.0), rtol=1e-6, atol=1e-15)
  np.testing.assert_array_equal(span_count_probabilities(0.0, 3), [0, 1, 0, 0])
  np.testing.assert_array_equal(span_count_probabilities(5.0, 1), [0, 1])


def test_spans_never_touch_boundaries_and_mask_images_whole(examples, rearranged):
  _, results = rearranged
  image_spans = 0
  for tokens, result in zip(examples, results):
    image = np.concatenate([[False], is_image(tokens), [False]])
    previous_end = -1
    for start, end in result.spans:
      assert previous_end < start < end  # sorted, non-overlapping, never adjacent
      assert not np.isin(tokens[start:end], IDS.boundary_ids).any()
      assert not (image[start] and image[start + 1])  # image[i + 1] is token i's
      assert not (image[end] and image[end + 1])
      image_spans += bool(image[start + 1])
      previous_end = end
  # An image is one unit against 32-80 text units, so it is rarely masked, but it is.
  assert image_spans > 0


def reference_layout(tokens, spans, style):
  """The rearranged sequence and loss weights, written out directly from the spans."""
  marks = [MASK] * len(spans) if style == 'mask' else SENTINELS[:len(spans)]
  body, weights, tail, after = [], [], [INFILL], 0
  for mark, (start, end) in zip(marks, spans):
    body += tokens[after:start].tolist() + [mark]
    weights += [1] * (start - after) + [0]
    tail += [mark] + tokens[start:end].tolist() + [EOSS]
    after = end
  body += tokens[after:].tolist()
  return body + tail, weights + [1] * (len(tokens) - after + len(tail))


def test_output_layout_and_loss_weights(examples, rearranged):
  config, results = rearranged
  for tokens, result in zip(examples, results):
    expected_tokens, expected_weights = reference_layout(tokens, result.spans,
                                                         config.sentinel_style)
    assert result.tokens.dtype == np.int32 and result.loss_weights.dtype == np.int32
    np.testing.assert_array_equal(result.tokens, expected_tokens)
    np.testing.assert_array_equal(result.loss_weights, expected_weights)
    assert len(result.tokens) == len(tokens) + extra_tokens(len(result.spans))


def test_restore_inverts_rearrange(examples, rearranged):
  config, results = rearranged
  for tokens, result in zip(examples, results):
    np.testing.assert_array_equal(restore(result.tokens, IDS, config), tokens)


def test_same_seed_same_masking_other_seed_other_masking(examples):
  config = CM3Config()

  def masked(seed):
    rng = np.random.default_rng(seed)
    return [rearrange(x, rng, IDS, config) for x in examples[:200]]

  first, again, other = masked(7), masked(7), masked(8)
  assert all(np.array_equal(a.tokens, b.tokens) and a.spans == b.spans
             for a, b in zip(first, again))
  assert sum(a.spans != b.spans for a, b in zip(first, other)) > 150


def test_capacity_clamp():
  config = CM3Config(poisson_rate=20.0)
  rng = np.random.default_rng(0)
  result = rearrange([5], rng, IDS, config)
  assert result.num_spans_drawn > 1 and result.spans == [(0, 1)]
  np.testing.assert_array_equal(result.tokens, [SENTINELS[0], INFILL, SENTINELS[0], 5, EOSS])
  np.testing.assert_array_equal(result.loss_weights, [0, 1, 1, 1, 1])
  # Capacity floor((m + 1) / 2) per segment: 1 + 2 + 1 (a whole image is one unit).
  tokens = [5, EOS, 6, 7, 8, BREAK] + [FIRST_IMAGE] * 16
  assert all(len(rearrange(tokens, rng, IDS, config).spans) == 4 for _ in range(20))


@pytest.mark.parametrize('tokens', [[], [EOS], [BREAK, EOS, BREAK]])
def test_inputs_without_units_come_back_unchanged(tokens):
  result = rearrange(np.array(tokens, np.int32), np.random.default_rng(0), IDS, CM3Config())
  np.testing.assert_array_equal(result.tokens, tokens)
  np.testing.assert_array_equal(result.loss_weights, np.ones(len(tokens)))
  assert result.spans == [] and result.num_spans_drawn >= 1
  np.testing.assert_array_equal(restore(result.tokens, IDS, CM3Config()), tokens)


def placement_frequencies(tokens, config, num_draws):
  rng = np.random.default_rng(3)
  return [tuple(rearrange(tokens, rng, IDS, config).spans) for _ in range(num_draws)]


def test_one_span_is_uniform_over_a_segment():
  draws = placement_frequencies([5, 6, 7, 8], CM3Config(poisson_rate=0.0), 5000)
  possible = [(a, b) for a, b in itertools.combinations(range(5), 2)]
  observed = [draws.count((span,)) for span in possible]
  assert sum(observed) == len(draws)
  assert stats.chisquare(observed).pvalue > 1e-3


def test_several_spans_are_uniform_over_configurations():
  # Segments of 2 and 3 units, n = 2: C(3, 2) C(4, 2) = 18 configurations with one span in each,
  # C(4, 4) = 1 with both in the second, none with both in the first; 19 equally likely in all.
  tokens = [5, 6, BREAK, 7, 8, 9]
  draws = placement_frequencies(tokens, CM3Config(poisson_rate=50.0, max_spans=2), 9500)
  counts = {configuration: draws.count(configuration) for configuration in set(draws)}
  assert len(counts) == 19 and ((3, 4), (5, 6)) in counts
  assert stats.chisquare(list(counts.values())).pvalue > 1e-3


@pytest.mark.parametrize('image_weight', ['tokens', 'unit'])
def test_an_image_weighs_as_its_token_spans_or_as_one_unit(image_weight):
  # Text of 3 units (C(4, 2) = 6 spans) and an image of 8 tokens: with n = 1 the image is masked
  # with odds C(9, 2) : 6 = 36 : 6 by tokens, or 1 : 6 as a single unit.
  tokens = [5, 6, 7, BREAK] + list(range(FIRST_IMAGE, FIRST_IMAGE + 8))
  config = CM3Config(poisson_rate=0.0, image_weight=image_weight)
  draws = placement_frequencies(tokens, config, 4200)
  image_share = sum(spans == ((4, 12),) for spans in draws) / len(draws)
  want = 36 / 42 if image_weight == 'tokens' else 1 / 7
  assert abs(image_share - want) < 0.03


def text_segments(tokens):
  """(start, end) of every maximal run of text tokens (between boundaries, not image codes)."""
  tokens = np.asarray(tokens)
  is_text = (tokens >= 2) & (tokens < BREAK)
  edges = np.flatnonzero(np.diff(np.concatenate([[0], is_text.astype(int), [0]])))
  return list(zip(edges[0::2].tolist(), edges[1::2].tolist()))


def test_whole_text_rate_one_masks_one_whole_caption_uniformly_and_keeps_the_count_law(examples):
  config = CM3Config(whole_text_rate=1.0)
  rng = np.random.default_rng(1)
  results = [rearrange(x, rng, IDS, config) for x in examples]
  chosen = []
  for tokens, result in zip(examples, results):
    segments = text_segments(tokens)
    whole = [span for span in result.spans if span in segments]
    assert len(whole) >= 1
    chosen.append(segments.index(whole[0]) / len(segments))
    np.testing.assert_array_equal(restore(result.tokens, IDS, config), tokens)
  # The whole caption is any of the example's captions alike (1-3 documents): mean index 1/3.
  assert abs(np.mean(chosen) - np.mean([(len(text_segments(x)) - 1) / (2 * len(text_segments(x)))
                                        for x in examples])) < 0.01
  # n keeps its law; a whole caption holds one span where it could hold several, so the capacity
  # clamp cuts n in a few examples (one document, n >= 3).
  drawn = np.bincount([r.num_spans_drawn for r in results], minlength=17)
  assert chi_square_p(drawn, span_count_probabilities(1.0, 16)) > 1e-3
  assert np.mean([len(r.spans) == r.num_spans_drawn for r in results]) > 0.97


def test_whole_text_rate_masks_captions_whole_at_that_rate_and_zero_is_the_default_law(examples):
  def whole_caption_share(config, seed=2):
    rng = np.random.default_rng(seed)
    return np.mean([any(span in text_segments(x) for span in rearrange(x, rng, IDS, config).spans)
                    for x in examples[:3000]])

  assert whole_caption_share(CM3Config()) < 0.01  # The papers' law: long captions, rarely whole.
  assert abs(whole_caption_share(CM3Config(whole_text_rate=0.3)) - 0.3) < 0.03
  default, zero = (rearrange(examples[0], np.random.default_rng(4), IDS, config)
                   for config in (CM3Config(), CM3Config(whole_text_rate=0.0)))
  np.testing.assert_array_equal(default.tokens, zero.tokens)


def test_whole_text_rate_leaves_examples_without_text_to_the_usual_law():
  image_only = list(range(FIRST_IMAGE, FIRST_IMAGE + 16))
  result = rearrange(image_only, np.random.default_rng(0), IDS, CM3Config(whole_text_rate=1.0))
  assert result.spans == [(0, 16)]


def test_num_spans_can_be_drawn_first():
  rng = np.random.default_rng(5)
  result = rearrange(list(range(2, 40)), rng, IDS, CM3Config(), num_spans=3)
  assert result.num_spans_drawn == 3 and len(result.spans) == 3


def test_extra_tokens():
  assert extra_tokens(0) == 0 and extra_tokens(1) == 4 and extra_tokens(16) == 49


def valid_rearrangement():
  """`a b c <break> d e` with spans [b] and [d e]."""
  return [5, SENTINELS[0], 7, BREAK, SENTINELS[1], INFILL, SENTINELS[0], 6, EOSS, SENTINELS[1], 8,
          9, EOSS]


@pytest.mark.parametrize('edit', [
    lambda t: t + [INFILL],  # a second <infill>
    lambda t: t[:-1],  # the last <eoss> missing
    lambda t: t[:6] + t[9:],  # sentinel 0 in the body without its moved span
    lambda t: t[:9],  # sentinel 1 in the body without its moved span
    lambda t: t[:4] + t[5:],  # a moved span without its sentinel in the body
    lambda t: t[:7] + t[8:],  # an empty span
    lambda t: t[:6] + t[9:] + t[6:9],  # spans moved out of order
    lambda t: t[:10] + [BREAK] + t[10:],  # a span holding <break>
    lambda t: t + [5],  # a token after the last <eoss>
    lambda t: t[:6] + [5] + t[6:],  # a token between <infill> and the first sentinel
    lambda t: [5, INFILL, SENTINELS[0], 6, EOSS],  # <infill> without a sentinel in the body
    lambda t: [5, SENTINELS[0], 7],  # a sentinel and no <infill>
])
def test_restore_rejects_malformed_input(edit):
  config = CM3Config()
  np.testing.assert_array_equal(restore(valid_rearrangement(), IDS, config),
                                [5, 6, 7, BREAK, 8, 9])
  with pytest.raises(ValueError, match='restore'):
    restore(edit(valid_rearrangement()), IDS, config)


def test_mask_style_restores_by_order():
  tokens = [MASK if t in SENTINELS else t for t in valid_rearrangement()]
  np.testing.assert_array_equal(restore(tokens, IDS, CM3Config(sentinel_style='mask')),
                                [5, 6, 7, BREAK, 8, 9])
  with pytest.raises(ValueError):
    restore(tokens, IDS, CM3Config())


def test_infilling_prompt():
  image = list(range(FIRST_IMAGE, FIRST_IMAGE + 4))
  tokens = [5, 6, 7, BREAK] + image
  caption = infilling_prompt(tokens, (0, 3), IDS, CM3Config())
  np.testing.assert_array_equal(caption, [SENTINELS[0], BREAK] + image + [INFILL, SENTINELS[0]])
  picture = infilling_prompt(tokens, (4, 8), IDS, CM3Config(sentinel_style='mask'))
  np.testing.assert_array_equal(picture, [5, 6, 7, BREAK, MASK, INFILL, MASK])
  # The prompt is a one-span rearrangement cut short before the span and its <eoss>.
  whole = list(picture) + image + [EOSS]
  np.testing.assert_array_equal(restore(whole, IDS, CM3Config(sentinel_style='mask')), tokens)
  for span in [(4, 6), (2, 5), (3, 3), (0, 9)]:
    with pytest.raises(ValueError):
      infilling_prompt(tokens, span, IDS, CM3Config())


def test_invalid_arguments():
  for kwargs in [dict(poisson_rate=-1.0), dict(poisson_rate=float('nan')), dict(max_spans=0),
                 dict(max_spans=2.0), dict(sentinel_style='sentinel'),
                 dict(whole_text_rate=1.5), dict(whole_text_rate=float('nan'))]:
    with pytest.raises(ValueError, match='CM3Config'):
      CM3Config(**kwargs)
  rng = np.random.default_rng(0)
  with pytest.raises(ValueError, match='inserts'):
    rearrange([5, MASK, 6], rng, IDS, CM3Config())
  with pytest.raises(ValueError, match='sentinel ids'):
    rearrange([5], rng, IDS, CM3Config(max_spans=17))
  with pytest.raises(ValueError, match='1-D'):
    rearrange([[5]], rng, IDS, CM3Config())
  with pytest.raises(ValueError, match='distinct'):
    CM3Tokens(boundary_ids=(BREAK, EOS), sentinel_ids=(MASK,), mask_id=MASK, infill_id=INFILL,
              eoss_id=EOSS, first_image_id=FIRST_IMAGE, num_image_codes=NUM_CODES)


def test_from_vocabulary():
  from cm3leon_jax.tokenizers.multimodal import MultimodalVocabulary  # pylint: disable=g-import-not-at-top

  class TextVocabulary:
    vocab_size, eos_id, unk_id = 100, 1, 2

  vocab = MultimodalVocabulary(TextVocabulary(), num_image_codes=64, num_sentinels=16,
                               pad_to_multiple=1)
  assert CM3Tokens.from_vocabulary(vocab) == IDS
