"""Distances between feature distributions: the Frechet distance (FID when the features are
pytorch-fid's Inception pool features, FD-CLIP when they are CLIP image embeddings, as in
Kynkaanniemi et al. 2023) and the kernel inception distance (KID, Binkowski et al. 2018).

The Frechet distance between N(mu1, S1) and N(mu2, S2) is
  |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2)).
``frechet_distance`` computes the trace term as pytorch-fid does (scipy's sqrtm of the product,
eps added to both diagonals when that is not finite, a small imaginary part dropped, a large one
an error), so published FIDs are reproduced to the last digits. ``frechet_distance_eigh`` uses
tr((S1 S2)^(1/2)) = sum of sqrt(eigenvalues of S1^(1/2) S2 S1^(1/2)), a symmetric positive
semi-definite matrix: it stays finite and real on the rank-deficient covariances of fewer images
than feature dimensions.
"""

import dataclasses
import math

import numpy as np
from absl import logging
from scipy import linalg

from cm3leon_jax.evaluation.statistics import StatisticsMismatchError


def _check_shapes(mu1, sigma1, mu2, sigma2):
  mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
  sigma1 = np.atleast_2d(np.asarray(sigma1, np.float64))
  sigma2 = np.atleast_2d(np.asarray(sigma2, np.float64))
  if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
    raise StatisticsMismatchError(
        f'Statistics of different widths: mu {mu1.shape} / {mu2.shape}, sigma {sigma1.shape} / '
        f'{sigma2.shape}.')
  return mu1, sigma1, mu2, sigma2


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
  """The Frechet distance as pytorch-fid's ``calculate_frechet_distance`` computes it.

  Raises:
    StatisticsMismatchError: the two sets of statistics have different widths.
    ValueError: the matrix square root has an imaginary diagonal above 1e-3 (as pytorch-fid).
  """
  mu1, sigma1, mu2, sigma2 = _check_shapes(mu1, sigma1, mu2, sigma2)
  diff = mu1 - mu2
  covmean = linalg.sqrtm(sigma1 @ sigma2)
  if not np.isfinite(covmean).all():
    logging.warning('The covariance product is singular: adding %g to both diagonals, as '
                    'pytorch-fid does.', eps)
    offset = np.eye(len(mu1)) * eps
    covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
  if np.iscomplexobj(covmean):
    if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
      raise ValueError(f'The matrix square root has an imaginary component of up to '
                       f'{np.abs(covmean.imag).max():g} (pytorch-fid stops here too).')
    covmean = covmean.real
  return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
  values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
  return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def frechet_distance_eigh(mu1, sigma1, mu2, sigma2) -> float:
  """The Frechet distance through symmetric eigenvalue problems: finite and real on
  ill-conditioned or rank-deficient covariances, where sqrtm of the product may not be."""
  mu1, sigma1, mu2, sigma2 = _check_shapes(mu1, sigma1, mu2, sigma2)
  root1 = _psd_sqrt(sigma1)
  product = root1 @ sigma2 @ root1
  eigenvalues = np.linalg.eigvalsh((product + product.T) / 2)
  trace_covmean = np.sqrt(np.clip(eigenvalues, 0, None)).sum()
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_covmean)


@dataclasses.dataclass(frozen=True)
class KernelDistance:
  """KID over random subsets: the mean of the unbiased MMD^2 estimates, their standard deviation
  across subsets (what torch-fidelity and clean-fid report as KID's std) and the standard error
  of the mean (std / sqrt(subsets))."""

  mean: float
  std: float
  standard_error: float
  subsets: int
  subset_size: int


def _unbiased_mmd2(x: np.ndarray, y: np.ndarray) -> float:
  """Unbiased MMD^2 with the cubic polynomial kernel k(a, b) = (a.b / dim + 1)^3."""
  m, dim = x.shape
  k_xx = (x @ x.T / dim + 1) ** 3
  k_yy = (y @ y.T / dim + 1) ** 3
  k_xy = (x @ y.T / dim + 1) ** 3
  within = ((k_xx.sum() - np.trace(k_xx)) + (k_yy.sum() - np.trace(k_yy))) / (m * (m - 1))
  return float(within - 2 * k_xy.mean())


def kernel_distance(features1: np.ndarray, features2: np.ndarray, subsets: int = 100,
                    subset_size: int = 1000, seed: int = 0) -> KernelDistance:
  """KID between two feature sets: `subsets` pairs of subsets, each drawn without replacement,
  of size min(subset_size, len(features1), len(features2))."""
  features1, features2 = np.asarray(features1, np.float64), np.asarray(features2, np.float64)
  if features1.shape[1:] != features2.shape[1:]:
    raise StatisticsMismatchError(
        f'KID needs features of one width, got {features1.shape} and {features2.shape}.')
  size = min(subset_size, len(features1), len(features2))
  if size < 2:
    raise ValueError(f'KID needs at least 2 features per set, got {len(features1)} and '
                     f'{len(features2)}.')
  rng = np.random.default_rng(seed)
  estimates = np.array([
      _unbiased_mmd2(features1[rng.choice(len(features1), size, replace=False)],
                     features2[rng.choice(len(features2), size, replace=False)])
      for _ in range(subsets)])
  std = float(estimates.std())
  return KernelDistance(float(estimates.mean()), std, std / math.sqrt(subsets), subsets, size)
