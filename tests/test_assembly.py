"""Training-example assembly: order of documents, truncation rules, CM3, loss weights."""

import numpy as np
import pytest

from cm3leon_jax.data import objective
from cm3leon_jax.data.assembly import AssemblyConfig, TokenLayout, assemble, document_tokens

# Text ids [2, 100), eos 1, <break> 100, <infill> 101, <eoss> 102, <mask> 103, sentinels 104..119,
# image codes at ids 120 + code.
EOS, BREAK = 1, 100
LAYOUT = TokenLayout(EOS, BREAK, 120, objective.CM3Tokens(
    boundary_ids=(BREAK, EOS), sentinel_ids=tuple(range(104, 120)), mask_id=103, infill_id=101,
    eoss_id=102, first_image_id=120, num_image_codes=64))
PLAIN = AssemblyConfig(masking_rate=0.0)


def doc(text_length, image_length=16, first=2):
  return (np.arange(first, first + text_length, dtype=np.int32),
          np.arange(image_length, dtype=np.int32) % 64)


def build(query, retrieved=(), max_length=512, config=PLAIN, seed=0):
  return assemble(query, retrieved, max_length, np.random.default_rng(seed), LAYOUT, config)


def test_a_document_is_text_break_image_or_image_break_text():
  text, image = doc(3, 2)
  np.testing.assert_array_equal(document_tokens((text, image), False, LAYOUT),
                                [2, 3, 4, BREAK, 120, 121])
  np.testing.assert_array_equal(document_tokens((text, image), True, LAYOUT),
                                [120, 121, BREAK, 2, 3, 4])
  np.testing.assert_array_equal(document_tokens((text, image[:0]), False, LAYOUT), [2, 3, 4])


def test_retrieved_documents_come_first_joined_by_eos():
  query, first, second = doc(4, first=10), doc(3, first=20), doc(2, first=30)
  tokens, weights = build(query, [first, second])
  want = np.concatenate([document_tokens(first, False, LAYOUT), [EOS],
                         document_tokens(second, False, LAYOUT), [EOS],
                         document_tokens(query, False, LAYOUT), [EOS]])
  np.testing.assert_array_equal(tokens, want)
  assert weights.tolist() == [1] * len(want)


def test_only_num_retrieved_documents_are_used():
  tokens, _ = build(doc(4), [doc(3)] * 5, config=AssemblyConfig(num_retrieved=1, masking_rate=0))
  assert (tokens == EOS).sum() == 2


def test_a_retrieved_document_that_does_not_fit_is_dropped_never_cut():
  query, big, small = doc(4, first=10), doc(30, first=20), doc(2, first=60)
  # query 21 + eos 1 = 22; room 40: the 47-token neighbour is dropped, the 19-token one kept.
  tokens, _ = build(query, [big, small], max_length=42)
  want = np.concatenate([document_tokens(small, False, LAYOUT), [EOS],
                         document_tokens(query, False, LAYOUT), [EOS]])
  np.testing.assert_array_equal(tokens, want)


def test_a_query_too_long_loses_the_end_of_its_text_never_its_image():
  tokens, _ = build(doc(50), max_length=30)
  assert len(tokens) == 30
  assert (tokens >= 120).sum() == 16 and tokens[-2] == 120 + 15  # The whole image, at the end.
  np.testing.assert_array_equal(tokens[:12], np.arange(2, 14))  # The text's beginning.


def test_a_query_whose_image_cannot_fit_gives_no_example():
  assert build(doc(2, image_length=40), max_length=30) is None


def test_cm3_examples_restore_to_the_assembled_documents_with_zero_weight_sentinels():
  config = AssemblyConfig()
  query, neighbours = doc(8, first=10), [doc(6, first=30), doc(5, first=50)]
  plain, _ = build(query, neighbours, config=PLAIN)
  for seed in range(200):
    tokens, weights = build(query, neighbours, config=config, seed=seed)
    assert tokens[-1] == EOS
    np.testing.assert_array_equal(objective.restore(tokens[:-1], LAYOUT.cm3, config.cm3),
                                  plain[:-1])
    in_place = np.isin(tokens, LAYOUT.cm3.sentinel_ids) & (np.cumsum(tokens == 101) == 0)
    assert in_place.any()
    np.testing.assert_array_equal(weights == 0, in_place)


def test_cm3_growth_is_budgeted_so_examples_never_exceed_max_length():
  config = AssemblyConfig(cm3=objective.CM3Config(poisson_rate=4.0))
  lengths = [len(build(doc(8), [doc(6), doc(5)], max_length=70, config=config, seed=s)[0])
             for s in range(300)]
  assert max(lengths) <= 70 and min(lengths) < max(lengths)


def test_image_first_probability_one_puts_every_image_first():
  tokens, _ = build(doc(3), [doc(2)], config=AssemblyConfig(image_first_probability=1.0,
                                                             masking_rate=0.0))
  documents = np.split(tokens[:-1], np.flatnonzero(tokens[:-1] == EOS))
  assert all(d[d != EOS][0] >= 120 for d in documents)


def test_invalid_configs_are_named():
  with pytest.raises(ValueError, match='masking_rate'):
    AssemblyConfig(masking_rate=1.5)
  with pytest.raises(ValueError, match='num_retrieved'):
    AssemblyConfig(num_retrieved=-1)
