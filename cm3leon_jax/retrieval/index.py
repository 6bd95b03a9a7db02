"""A memory bank of document embeddings searched by maximum inner product (RA-CM3, arXiv
2211.12561, section 3).

Embeddings are CLIP document embeddings (the mean of the L2-normalised text and image embeddings,
re-normalised), so the inner product is the cosine similarity that the selection threshold
(`select.SelectionConfig.max_score`) is expressed in. Nothing is normalised here: `build` and
`search` raise `RetrievalError` for a row whose L2 norm is off 1 by more than `NORM_TOLERANCE`,
because silently normalising would hide an encoder that forgot to, and change what 0.9 means.

ScaNN is imported inside the functions: importing it loads TensorFlow, which crashes the torch
peers of tools/benchmark.py when loaded into the same process.
"""

import dataclasses
import json
import math
import os
from collections.abc import Sequence

import numpy as np

from cm3leon_jax.tokenizers.document_encoder import EncoderInfo

NORM_TOLERANCE = 1e-3
_CONFIG_FILE = 'index.json'
_IDS_FILE = 'ids.json'
_SEARCHER_DIR = 'searcher'


class RetrievalError(ValueError):
  """A memory bank that cannot be built, loaded or searched as asked."""


@dataclasses.dataclass(frozen=True)
class IndexConfig:
  """How to index the bank.

  Attributes:
    method: 'brute_force' (exact), 'scann' (tree + anisotropic hashing + exact reorder) or 'auto'
      (brute force below `brute_force_below` rows, where it is fast and exact, else ScaNN).
    brute_force_below: row count under which 'auto' picks brute force.
    num_leaves: tree partitions; None: about sqrt(rows).
    num_leaves_to_search: partitions scored per query; None: 1/20 of num_leaves (at least 1).
    dimensions_per_block: dimensions per anisotropic-hashing codebook (2 is ScaNN's recommended
      accuracy; 4 halves the scoring cost).
    anisotropic_quantization_threshold: ScaNN's eta threshold; 0.2 suits normalised embeddings.
    reorder: candidates rescored exactly after hashing (at least the k asked for).
    training_sample_size: rows sampled to train the tree and the codebooks.
    encoder: the encoder of the embeddings, saved with the index (None: unchecked).
  """
  method: str = 'auto'
  brute_force_below: int = 20_000
  num_leaves: int | None = None
  num_leaves_to_search: int | None = None
  dimensions_per_block: int = 2
  anisotropic_quantization_threshold: float = 0.2
  reorder: int = 100
  training_sample_size: int = 100_000
  encoder: EncoderInfo | None = None

  def resolved_method(self, rows: int) -> str:
    """'brute_force' or 'scann' for a bank of `rows` rows."""
    if self.method not in ('auto', 'brute_force', 'scann'):
      raise RetrievalError(f"IndexConfig.method must be 'auto', 'brute_force' or 'scann'; "
                           f'got {self.method!r}.')
    if self.method == 'auto':
      return 'brute_force' if rows < self.brute_force_below else 'scann'
    return self.method

  def leaves(self, rows: int) -> tuple[int, int]:
    """(num_leaves, num_leaves_to_search) for a bank of `rows` rows."""
    num_leaves = self.num_leaves or max(1, round(math.sqrt(rows)))
    num_leaves = min(num_leaves, rows)
    to_search = self.num_leaves_to_search or max(1, num_leaves // 20)
    return num_leaves, min(to_search, num_leaves)


def check_normalised(vectors: np.ndarray, what: str):
  """Raise RetrievalError unless every row of `vectors` has L2 norm 1 (within NORM_TOLERANCE)."""
  # einsum, not np.linalg.norm: no squared copy of a multi-GiB bank.
  norms = np.sqrt(np.einsum('ij,ij->i', vectors, vectors))
  bad = np.flatnonzero(np.abs(norms - 1.0) > NORM_TOLERANCE)
  if bad.size:
    raise RetrievalError(
        f'{what} must be L2-normalised (norm 1 +- {NORM_TOLERANCE}); row {bad[0]} has norm '
        f'{norms[bad[0]]:.4f} ({bad.size} rows off). Normalise them in the encoder.')


def _as_matrix(vectors, what: str) -> np.ndarray:
  array = np.asarray(vectors, dtype=np.float32)
  if array.ndim != 2:
    raise RetrievalError(f'{what} must be a [rows, dim] matrix; got shape {array.shape}.')
  return np.ascontiguousarray(array)


class MemoryIndex:
  """Maximum inner product search over a bank of L2-normalised embeddings with document ids."""

  def __init__(self, searcher, ids: list[str], dim: int, config: IndexConfig):
    """Use `build` or `load`; this wraps an already built ScaNN searcher."""
    self._searcher = searcher
    self.ids = ids
    self.dim = dim
    self.config = config
    self.method = config.resolved_method(len(ids))

  def __len__(self) -> int:
    return len(self.ids)

  @classmethod
  def build(cls, embeddings, ids: Sequence[str], config: IndexConfig = IndexConfig()):
    """Index `embeddings` [N, D] (float32, L2-normalised rows); row i is document `ids[i]`."""
    # Before the shape check: an empty store may come as [] (shape [0]) rather than [0, D].
    if len(embeddings) == 0:
      raise RetrievalError('Cannot build a memory index from an empty store (0 embeddings).')
    embeddings = _as_matrix(embeddings, 'embeddings')
    ids = [str(i) for i in ids]
    rows, dim = embeddings.shape
    if len(ids) != rows:
      raise RetrievalError(f'{rows} embeddings but {len(ids)} ids; give one id per row.')
    if config.encoder is not None and config.encoder.dim != dim:
      raise RetrievalError(f'Encoder {config.encoder.name!r} makes {config.encoder.dim}-d '
                           f'embeddings but the embeddings are {dim}-d.')
    check_normalised(embeddings, 'embeddings')
    from scann import scann_ops_pybind  # pylint: disable=g-import-not-at-top
    builder = scann_ops_pybind.builder(embeddings, min(10, rows), 'dot_product')
    if config.resolved_method(rows) == 'brute_force':
      builder = builder.score_brute_force()
    else:
      num_leaves, to_search = config.leaves(rows)
      builder = builder.tree(
          num_leaves=num_leaves, num_leaves_to_search=to_search,
          training_sample_size=min(config.training_sample_size, rows)).score_ah(
              config.dimensions_per_block,
              anisotropic_quantization_threshold=config.anisotropic_quantization_threshold
          ).reorder(config.reorder)
    return cls(builder.build(), ids, dim, config)

  def search_rows(self, queries, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(bank rows [Q, k'] int, scores [Q, k'] float32), best first; k' = min(k, len(self))."""
    queries = _as_matrix(queries, 'queries')
    if queries.shape[1] != self.dim:
      raise RetrievalError(f'Queries are {queries.shape[1]}-d but the index holds '
                           f'{self.dim}-d embeddings; embed them with the index\'s encoder.')
    if k < 1:
      raise RetrievalError(f'k must be at least 1; got {k}.')
    check_normalised(queries, 'queries')
    k = min(k, len(self))
    if queries.shape[0] == 0:
      return np.zeros((0, k), np.int64), np.zeros((0, k), np.float32)
    # ScaNN reorders pre_reorder_num_neighbors candidates; fewer than k would cut the answer short.
    pre_reorder = None if self.method == 'brute_force' else max(self.config.reorder, k)
    rows, scores = self._searcher.search_batched(
        queries, final_num_neighbors=k, pre_reorder_num_neighbors=pre_reorder)
    return np.asarray(rows, np.int64), np.asarray(scores, np.float32)

  def search(self, queries, k: int) -> tuple[list[list[str]], np.ndarray]:
    """(document ids, one list of k per query, best first; scores [Q, k]) for queries [Q, D].

    k is capped at the bank's size.
    """
    rows, scores = self.search_rows(queries, k)
    return [[self.ids[r] for r in row] for row in rows], scores

  def save(self, directory: str):
    """Write the ScaNN searcher, the config (with the encoder) and the row -> document id map."""
    os.makedirs(os.path.join(directory, _SEARCHER_DIR), exist_ok=True)
    # relative_path: the saved index still loads after its directory is moved or copied.
    self._searcher.serialize(os.path.join(directory, _SEARCHER_DIR), relative_path=True)
    config = dataclasses.asdict(self.config)
    with open(os.path.join(directory, _CONFIG_FILE), 'w') as f:
      json.dump({'config': config, 'count': len(self), 'dim': self.dim}, f, indent=2)
    with open(os.path.join(directory, _IDS_FILE), 'w') as f:
      json.dump(self.ids, f)

  @classmethod
  def load(cls, directory: str, expected_encoder: EncoderInfo | None = None):
    """The index saved in `directory`; RetrievalError if files are missing or the encoder differs.

    With `expected_encoder`, the index must have been built with exactly that encoder (an index
    saved without one is refused too: its embeddings' origin is unknown).
    """
    paths = [os.path.join(directory, name) for name in (_CONFIG_FILE, _IDS_FILE, _SEARCHER_DIR)]
    missing = [p for p in paths if not os.path.exists(p)]
    if missing:
      raise RetrievalError(f'No saved memory index in {directory!r}: missing {missing}.')
    with open(paths[0]) as f:
      saved = json.load(f)
    encoder = saved['config'].pop('encoder')
    config = IndexConfig(**saved['config'],
                         encoder=EncoderInfo(**encoder) if encoder is not None else None)
    if expected_encoder is not None and config.encoder != expected_encoder:
      raise RetrievalError(f'Encoder mismatch: the index in {directory!r} was built with '
                           f'{config.encoder}, but the queries come from {expected_encoder}.')
    with open(paths[1]) as f:
      ids = json.load(f)
    if len(ids) != saved['count']:
      raise RetrievalError(f'{paths[1]} holds {len(ids)} ids; the index has {saved["count"]}.')
    from scann import scann_ops_pybind  # pylint: disable=g-import-not-at-top
    return cls(scann_ops_pybind.load_searcher(paths[2]), ids, saved['dim'], config)
