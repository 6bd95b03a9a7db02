"""Selection rules of retrieved documents and query dropout (RA-CM3, arXiv 2211.12561, sec. 3)."""

import numpy as np
import pytest

from cm3leon_jax.retrieval.select import SelectionConfig, select_neighbours
from cm3leon_jax.tokenizers.document_encoder import query_dropout

IDS = ['q', 'copy', 'a', 'a_dup', 'b', 'c', 'text_only']
SCORES = [1.0, 0.95, 0.85, 0.84, 0.8, 0.7, 0.88]
BOTH = {'q': True, 'copy': True, 'a': True, 'a_dup': True, 'b': True, 'c': True,
        'text_only': False}
FINGERPRINTS = {'a': 'hash-a', 'a_dup': 'hash-a', 'b': 'hash-b', 'c': 'hash-c'}


def select(k=2, **kwargs):
  return select_neighbours('q', IDS, SCORES, BOTH, FINGERPRINTS, SelectionConfig(k=k, **kwargs))


def test_skips_query_near_copies_and_duplicates():
  chosen = select(k=6)
  assert 'q' not in chosen and 'copy' not in chosen  # The query itself and a score above 0.9.
  assert not {'a', 'a_dup'} <= set(chosen)  # Same fingerprint: one of them at most.
  assert chosen == ['a', 'b', 'c', 'text_only']  # Fewer than k: nothing else passes the rules.


def test_exactly_k_by_score_with_both_modalities_first():
  assert select(k=2) == ['a', 'b']
  # Without the preference, the text-only document's higher score wins.
  assert select(k=2, prefer_both_modalities=False) == ['text_only', 'a']


def test_nothing_above_threshold():
  chosen = select(k=6, max_score=0.82)
  assert chosen == ['b', 'c']
  assert all(SCORES[IDS.index(doc)] <= 0.82 for doc in chosen)


def test_copy_of_the_query_under_another_id_is_skipped():
  fingerprints = dict(FINGERPRINTS, q='hash-b')
  chosen = select_neighbours('q', IDS, SCORES, BOTH, fingerprints, SelectionConfig(k=6))
  assert chosen == ['a', 'c', 'text_only']


def test_callables_and_no_candidates():
  chosen = select_neighbours('q', IDS, SCORES, lambda d: d != 'text_only',
                             lambda d: FINGERPRINTS.get(d), SelectionConfig(k=2))
  assert chosen == ['a', 'b']
  assert select_neighbours('q', ['q'], [1.0]) == []
  assert select_neighbours('q', [], []) == []


def test_query_dropout_is_seeded_and_drops_the_fraction():
  tokens = list(range(100))
  kept = query_dropout(tokens, 0.2, 7)
  assert len(kept) == 80 and kept == sorted(kept) and set(kept) <= set(tokens)
  assert kept == query_dropout(tokens, 0.2, 7)
  assert kept != query_dropout(tokens, 0.2, 8)
  array = query_dropout(np.arange(10), 0.2, np.random.default_rng(0))
  assert isinstance(array, np.ndarray) and array.shape == (8,)


def test_query_dropout_never_drops_everything():
  assert len(query_dropout([5], 0.9, 0)) == 1
  assert len(query_dropout([1, 2], 0.99, 0)) == 1
  assert query_dropout([], 0.2, 0) == []
  with pytest.raises(ValueError, match=r'in \[0, 1\)'):
    query_dropout([1, 2], 1.0, 0)
