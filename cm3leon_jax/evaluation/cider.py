"""CIDEr-D (Vedantam, Zitnick and Parikh 2015) as the COCO caption evaluation computes it
(pycocoevalcap's ``Cider``), on captions already tokenized (``ptb_tokenizer.tokenize``).

For each n in 1..4, a caption is a vector of tf-idf weights over its n-grams: the n-gram's count
times log(#images) - log(max(1, df)), where df counts the images whose references contain it
(document frequencies come from the evaluated references themselves). A candidate's score against
one reference is, per n, the clipped cosine sum over the candidate's n-grams of
min(w_cand, w_ref) * w_ref / (|cand| |ref|), times the Gaussian length penalty
exp(-delta^2 / (2 sigma^2)) with sigma 6; the image's score is the mean over n and over its
references, times 10. As in pycocoevalcap, delta compares the captions' bigram counts (one less
than their word counts, except for an empty caption), and the corpus score is the mean over
images.
"""

import collections
import math
from typing import Dict, Hashable, List, Mapping, Sequence, Tuple

import numpy as np

NGRAM_ORDER = 4
SIGMA = 6.0

Ngram = Tuple[str, ...]


def _ngram_counts(caption: str, order: int) -> collections.Counter:
  words = caption.split()
  return collections.Counter(tuple(words[i:i + n]) for n in range(1, order + 1)
                             for i in range(len(words) - n + 1))


class _Vector:
  """One caption's tf-idf weights per n-gram order, their norms, and its bigram count."""

  def __init__(self, counts: collections.Counter, idf: Dict[Ngram, float], log_images: float,
               order: int):
    self.weights: List[Dict[Ngram, float]] = [{} for _ in range(order)]
    for ngram, count in counts.items():
      self.weights[len(ngram) - 1][ngram] = count * (log_images - idf.get(ngram, 0.0))
    self.norms = [math.sqrt(sum(w * w for w in by_order.values())) for by_order in self.weights]
    self.length = sum(count for ngram, count in counts.items() if len(ngram) == 2)

  def similarity(self, reference: '_Vector', sigma: float) -> np.ndarray:
    """Per order: the clipped cosine with `reference`, times the length penalty."""
    penalty = math.exp(-((self.length - reference.length) ** 2) / (2 * sigma ** 2))
    values = np.zeros(len(self.weights))
    for n, (mine, theirs) in enumerate(zip(self.weights, reference.weights)):
      value = sum(min(weight, theirs.get(ngram, 0.0)) * theirs.get(ngram, 0.0)
                  for ngram, weight in mine.items())
      if self.norms[n] and reference.norms[n]:
        value /= self.norms[n] * reference.norms[n]
      values[n] = value * penalty
    return values


def cider_d(references: Mapping[Hashable, Sequence[str]], candidates: Mapping[Hashable, str],
            order: int = NGRAM_ORDER, sigma: float = SIGMA) -> Tuple[float, Dict[Hashable, float]]:
  """(corpus CIDEr-D, {image: CIDEr-D}) of one candidate caption per image.

  Args:
    references: image -> its reference captions (tokenized, at least one).
    candidates: image -> the caption to score (tokenized); the same images as `references`.

  Raises:
    ValueError: the images differ between the two, or an image has no references.
  """
  if set(references) != set(candidates):
    missing, extra = set(references) - set(candidates), set(candidates) - set(references)
    raise ValueError(f'Candidates and references must cover the same images: {len(missing)} '
                     f'without a candidate, {len(extra)} without references.')
  empty = [image for image, refs in references.items() if not refs]
  if empty:
    raise ValueError(f'{len(empty)} images have no reference captions, e.g. {empty[0]!r}.')
  images = list(references)
  reference_counts = {image: [_ngram_counts(ref, order) for ref in references[image]]
                      for image in images}
  frequency = collections.Counter(
      ngram for image in images for ngram in set().union(*reference_counts[image]))
  idf = {ngram: math.log(max(1.0, df)) for ngram, df in frequency.items()}
  log_images = math.log(len(images))
  scores = {}
  for image in images:
    candidate = _Vector(_ngram_counts(candidates[image], order), idf, log_images, order)
    total = np.zeros(order)
    for counts in reference_counts[image]:
      total += candidate.similarity(_Vector(counts, idf, log_images, order), sigma)
    scores[image] = float(np.mean(total) / len(reference_counts[image]) * 10.0)
  return float(np.mean(list(scores.values()))), scores
