"""FD-CLIP and CLIP score of several sets of generated images, beside the floor a perfect model
would reach at the same count: the distance between two disjoint sets of real images.

At small counts the Frechet distance is biased upwards, so a figure means little alone; the floor
and the unconditional samples (the caption masked) bracket it: a text-to-image model should land
between them, and guidance should move it towards the floor.
"""

from typing import Dict, Optional, Sequence

import numpy as np

from cm3leon_jax.evaluation import distances
from cm3leon_jax.evaluation.clip_metrics import ClipMetrics
from cm3leon_jax.evaluation.statistics import FeatureStatistics


def fd_clip_report(clip: ClipMetrics, reference: np.ndarray, floor: np.ndarray,
                   samples: Dict[str, np.ndarray],
                   captions: Optional[Sequence[str]] = None) -> Dict[str, Dict[str, float]]:
  """{name: {'fd_clip', 'mean_term', 'clip_score'}} for each set of `samples`, and 'real': what a
  perfect model would reach, its FD-CLIP that of the `floor` images against the `reference` ones
  (both real, disjoint, of the same count), its CLIP score that of the reference images with
  their own captions. 'mean_term' is the part of FD-CLIP due to the means alone,
  ||mu - mu_reference||^2 (the rest compares the covariances): it tells a set whose average
  image drifted from one whose spread is wrong.

  Args:
    clip: the measuring CLIP (not the one that retrieved or re-ranked the samples).
    reference, floor: uint8 real images [N, H, W, 3], two disjoint sets.
    samples: name -> uint8 generated images [N, H, W, 3], the same count as `reference`.
    captions: the caption of each sample (row i of every set) and of reference image i, for the
      CLIP score.

  Raises:
    ValueError: a set whose count differs from the reference's (the distances would not
      compare).
  """
  count = len(reference)
  sets = {'real': floor, **samples}
  wrong = {name: len(images) for name, images in sets.items() if len(images) != count}
  if wrong:
    raise ValueError(f'Every set must hold {count} images, as the reference does; got {wrong}.')
  reference_features = clip.image_features(reference)
  reference_stats = FeatureStatistics.of(reference_features)
  report = {}
  for name, images in sets.items():
    features = clip.image_features(images)
    stats = FeatureStatistics.of(features)
    distance = distances.frechet_distance_eigh(stats.mu, stats.sigma, reference_stats.mu,
                                               reference_stats.sigma)
    report[name] = {'fd_clip': distance,
                    'mean_term': float(np.sum((stats.mu - reference_stats.mu) ** 2))}
    if captions is not None:
      scored = reference_features if name == 'real' else features
      report[name]['clip_score'] = float(np.mean(clip.clip_scores(scored, captions)))
  return report
