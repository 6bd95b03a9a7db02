"""Streaming feature statistics (mean and covariance in float64) and their `.npz` files.

``FeatureStatistics`` accumulates batches with the pairwise update of Chan, Golub and LeVeque
(each batch's mean and centred scatter, merged exactly), so statistics of batches, devices or
hosts merge in any order into what one pass over all features gives. The covariance divides by
n - 1, as ``np.cov`` and pytorch-fid do.

Files use pytorch-fid's keys, `mu` and `sigma`, so statistics written by pytorch-fid's
``--save-stats`` load here and ours load there. Ours add `num_images` and, for resuming, the
centred scatter `m2`; KID needs the features themselves, kept under `features` when asked.
"""

import os
from typing import Optional

import numpy as np


def save_npz_atomically(path: str, **arrays) -> None:
  """np.savez to `path` through a temporary file, so a run killed mid-write leaves no
  half-written file (resumable runs trust every file they find)."""
  temporary = path + '.partial.npz'  # np.savez adds .npz to names without it.
  np.savez(temporary, **arrays)
  os.replace(temporary, path)


class StatisticsMismatchError(ValueError):
  """Statistics that cannot be compared or merged (another feature width, a file without `mu`)."""


class FeatureStatistics:
  """Count, mean and centred scatter of a stream of feature vectors, in float64."""

  def __init__(self, dim: int):
    self.dim = dim
    self.count = 0
    self.mean = np.zeros(dim, np.float64)
    self.m2 = np.zeros((dim, dim), np.float64)  # Sum of outer products of centred features.

  @classmethod
  def of(cls, features: np.ndarray) -> 'FeatureStatistics':
    """The statistics of one array of features [N, dim]."""
    stats = cls(np.asarray(features).shape[-1])
    stats.update(features)
    return stats

  def update(self, features: np.ndarray) -> 'FeatureStatistics':
    """Add features [N, dim] (any float dtype); returns self."""
    features = np.asarray(features, np.float64)
    if features.ndim != 2 or features.shape[1] != self.dim:
      raise StatisticsMismatchError(
          f'Expected features [N, {self.dim}], got shape {features.shape}.')
    if len(features):
      batch = FeatureStatistics(self.dim)
      batch.count = len(features)
      batch.mean = features.mean(axis=0)
      centred = features - batch.mean
      batch.m2 = centred.T @ centred
      self.merge(batch)
    return self

  def merge(self, other: 'FeatureStatistics') -> 'FeatureStatistics':
    """Add another stream's statistics (Chan et al.'s pairwise formula); returns self."""
    if other.dim != self.dim:
      raise StatisticsMismatchError(f'Cannot merge statistics of width {other.dim} into {self.dim}.')
    if other.count == 0:
      return self
    total = self.count + other.count
    delta = other.mean - self.mean
    self.m2 = self.m2 + other.m2 + np.outer(delta, delta) * (self.count * other.count / total)
    self.mean = self.mean + delta * (other.count / total)
    self.count = total
    return self

  @property
  def mu(self) -> np.ndarray:
    """The mean feature [dim] (pytorch-fid's name)."""
    return self.mean.copy()

  @property
  def sigma(self) -> np.ndarray:
    """The covariance [dim, dim], normalised by count - 1 (``np.cov``'s default)."""
    if self.count < 2:
      raise StatisticsMismatchError(f'A covariance needs at least 2 features, got {self.count}.')
    return self.m2 / (self.count - 1)

  def save(self, path: str, features: Optional[np.ndarray] = None, **extra) -> None:
    """Write `mu`, `sigma` (pytorch-fid's keys), `num_images`, `m2` and optional `features`."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    arrays = dict(mu=self.mu, sigma=self.sigma, num_images=np.int64(self.count), m2=self.m2,
                  **extra)
    if features is not None:
      arrays['features'] = np.asarray(features, np.float32)
    save_npz_atomically(path, **arrays)

  @classmethod
  def load(cls, path: str) -> 'FeatureStatistics':
    """Statistics written by ``save`` (with their count and scatter, so they can be merged)."""
    with np.load(path) as data:
      if 'm2' not in data or 'num_images' not in data:
        raise StatisticsMismatchError(
            f'{path} has no `m2` and `num_images`: statistics written by pytorch-fid (`mu` and '
            '`sigma` only) can be compared against (load_reference) but not added to.')
      stats = cls(len(data['mu']))
      stats.count = int(data['num_images'])
      stats.mean, stats.m2 = data['mu'].astype(np.float64), data['m2'].astype(np.float64)
    return stats


def load_reference(path: str, dim: int):
  """(mu, sigma) of reference statistics for features of width `dim`.

  Raises:
    StatisticsMismatchError: the file's statistics are of another width (e.g. pool3 statistics
      for CLIP features), named with both widths.
  """
  with np.load(path) as data:
    if 'mu' not in data or 'sigma' not in data:
      raise StatisticsMismatchError(
          f'{path} has no `mu` and `sigma` (pytorch-fid\'s keys); it holds {sorted(data)}.')
    mu, sigma = data['mu'].astype(np.float64), data['sigma'].astype(np.float64)
  if mu.shape != (dim,) or sigma.shape != (dim, dim):
    raise StatisticsMismatchError(
        f'{path} holds statistics of {mu.shape[-1] if mu.ndim else "?"}-d features (mu '
        f'{mu.shape}, sigma {sigma.shape}), but these features are {dim}-d: reference and samples '
        'must come from the same network.')
  return mu, sigma
