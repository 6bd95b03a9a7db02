"""Which retrieved documents to prepend to a query document (RA-CM3, arXiv 2211.12561, section 3;
CM3Leon, arXiv 2309.02591, section 2.1; the choices they leave open are in docs/method.md).

Relevance by score; modality: documents with both text and image first; diversity: skip near
copies of the query (score above `max_score`) and duplicates of documents already chosen; query
dropout: drop a fraction of the query's tokens before embedding it, so training does not learn to
lean on retrieved near-copies of its target.
"""

import dataclasses
from collections.abc import Callable, Hashable, Mapping, Sequence

import numpy as np

Lookup = Mapping[str, object] | Callable[[str], object]


@dataclasses.dataclass(frozen=True)
class SelectionConfig:
  """The selection rules.

  Attributes:
    k: documents to select (2 fit into 4096 tokens with 1024-token images).
    max_score: candidates scoring above it are near copies of the query and are skipped.
    query_dropout: fraction of the query's tokens dropped before embedding it.
    prefer_both_modalities: rank documents with both text and image before the others.
  """
  k: int = 2
  max_score: float = 0.9
  query_dropout: float = 0.2
  prefer_both_modalities: bool = True


def _lookup(table: Lookup | None, key: str, default):
  if table is None:
    return default
  return table(key) if callable(table) else table.get(key, default)


def select_neighbours(query_id: str, candidate_ids: Sequence[str], candidate_scores,
                      candidate_has_both: Lookup | None = None,
                      candidate_fingerprints: Lookup | None = None,
                      config: SelectionConfig = SelectionConfig()) -> list[str]:
  """Up to `config.k` candidate ids to retrieve for `query_id`, in the order to prepend them.

  Args:
    query_id: the query document's id (never selected).
    candidate_ids: retrieved document ids (e.g. one row of `MemoryIndex.search`).
    candidate_scores: their inner products with the query, same order.
    candidate_has_both: id -> whether the document has both text and image (mapping or callable;
      None: no modality preference).
    candidate_fingerprints: id -> a hashable digest of the document's content (e.g. a hash of its
      tokens); two candidates with the same fingerprint are duplicates, and a candidate with the
      query's fingerprint is a copy of the query (a callable is asked for `query_id` too). A
      missing fingerprint (None) only matches the same id.
    config: the selection rules.

  Returns:
    Both-modality candidates first, then the others, each by decreasing score; fewer than k ids
    when not enough candidates pass the rules.
  """
  scores = np.asarray(candidate_scores, np.float64).reshape(-1)
  if len(candidate_ids) != scores.size:
    raise ValueError(f'{len(candidate_ids)} candidate ids but {scores.size} scores.')
  eligible = [(float(score), i, doc) for i, (doc, score) in enumerate(zip(candidate_ids, scores))
              if score <= config.max_score]

  def rank(entry):
    score, position, doc = entry
    both = config.prefer_both_modalities and bool(_lookup(candidate_has_both, doc, False))
    # The original position breaks ties, so equal scores keep the retriever's order.
    return (not both, -score, position)

  def keys(doc):
    fingerprint: Hashable = _lookup(candidate_fingerprints, doc, None)
    return {('id', doc)} | ({('fingerprint', fingerprint)} if fingerprint is not None else set())

  # Seeded with the query: neither it nor a copy of it under another id is selected, even when
  # query dropout has pushed the copy's score below max_score.
  chosen, seen = [], keys(query_id)
  for _, _, doc in sorted(eligible, key=rank):
    keys_of_doc = keys(doc)
    if keys_of_doc & seen:
      continue
    seen |= keys_of_doc
    chosen.append(doc)
    if len(chosen) == config.k:
      break
  return chosen
