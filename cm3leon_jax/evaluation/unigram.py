"""The loss of predicting tokens from their frequencies alone: the floor a model must beat.

Counts the weighted target tokens of training batches, then scores validation batches under that
unigram distribution (add-half smoothing so unseen tokens have a finite cost), in nats per weighted
token, the unit of the trainer's loss.
"""

from typing import Iterable, Mapping

import numpy as np


def token_counts(batches: Iterable[Mapping[str, np.ndarray]], vocab_size: int) -> np.ndarray:
  """Weighted counts of decoder_target_tokens over `batches`."""
  counts = np.zeros(vocab_size, np.float64)
  for batch in batches:
    np.add.at(counts, batch['decoder_target_tokens'].ravel(),
              batch['decoder_loss_weights'].ravel().astype(np.float64))
  return counts


def unigram_loss(counts: np.ndarray, batches: Iterable[Mapping[str, np.ndarray]]) -> float:
  """Mean weighted cross-entropy of `batches` under the smoothed unigram of `counts`."""
  log_probs = np.log((counts + 0.5) / (counts.sum() + 0.5 * len(counts)))
  total = weight = 0.0
  for batch in batches:
    weights = batch['decoder_loss_weights'].astype(np.float64)
    total -= (weights * log_probs[batch['decoder_target_tokens']]).sum()
    weight += weights.sum()
  if not weight:
    raise ValueError('No weighted token to score the unigram baseline on.')
  return total / weight
