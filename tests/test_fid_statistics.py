"""Streaming statistics, the Frechet distance and KID against pytorch-fid and direct formulas."""

import os

import numpy as np
import pytest
from PIL import Image

import fid_helpers
from cm3leon_jax.evaluation import distances
from cm3leon_jax.evaluation.statistics import (FeatureStatistics, StatisticsMismatchError,
                                               load_reference)


def _features(seed, count, dim, scale=1.0, shift=0.0):
  """Correlated Gaussian features; one distribution per (dim, scale, shift), one draw per seed."""
  mixing = np.random.default_rng(dim).normal(size=(dim, dim)) / np.sqrt(dim)
  return (np.random.default_rng(seed).normal(size=(count, dim)) @ mixing) * scale + shift


def _relative(a, b):
  return abs(a - b) / abs(b)


def test_streaming_statistics_equal_one_shot_numpy():
  features = _features(0, 700, 96) + 5.0  # An offset mean: the naive sum-of-squares loses digits.
  stats = FeatureStatistics(96)
  for start, stop in ((0, 1), (1, 1), (1, 250), (250, 251), (251, 700)):  # Incl. empty, single.
    stats.update(features[start:stop])
  assert stats.count == 700
  np.testing.assert_allclose(stats.mu, features.mean(axis=0), rtol=1e-12, atol=0)
  np.testing.assert_allclose(stats.sigma, np.cov(features, rowvar=False), rtol=1e-9, atol=1e-13)


def test_merging_in_any_order_gives_the_same_statistics():
  parts = [_features(seed, count, 32) for seed, count in ((1, 10), (2, 333), (3, 57))]
  forward = FeatureStatistics(32)
  for part in parts:
    forward.merge(FeatureStatistics.of(part))
  backward = FeatureStatistics.of(parts[2]).merge(FeatureStatistics.of(parts[1]))
  backward.merge(FeatureStatistics.of(parts[0]))
  one_shot = np.concatenate(parts)
  for stats in (forward, backward):
    np.testing.assert_allclose(stats.mu, one_shot.mean(axis=0), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(stats.sigma, np.cov(one_shot, rowvar=False), rtol=1e-9,
                               atol=1e-14)
  with pytest.raises(StatisticsMismatchError, match='width 16 into 32'):
    forward.merge(FeatureStatistics(16))


def test_frechet_distance_equals_pytorch_fid_and_the_eigenvalue_form_agrees():
  from pytorch_fid.fid_score import calculate_frechet_distance  # pylint: disable=g-import-not-at-top
  a = FeatureStatistics.of(_features(4, 1500, 128))
  b = FeatureStatistics.of(_features(5, 1200, 128, scale=1.3, shift=0.2))
  want = calculate_frechet_distance(a.mu, a.sigma, b.mu, b.sigma)
  assert want > 1.0  # Distinct distributions: the comparison is not of two zeros.
  assert _relative(distances.frechet_distance(a.mu, a.sigma, b.mu, b.sigma), want) < 1e-6
  assert _relative(distances.frechet_distance_eigh(a.mu, a.sigma, b.mu, b.sigma), want) < 1e-6
  # Symmetric in its arguments, and zero between a distribution and itself.
  assert _relative(distances.frechet_distance_eigh(b.mu, b.sigma, a.mu, a.sigma), want) < 1e-6
  assert abs(distances.frechet_distance_eigh(a.mu, a.sigma, a.mu, a.sigma)) < 1e-8 * want


def test_rank_deficient_covariances_stay_finite_in_the_eigenvalue_form():
  from pytorch_fid.fid_score import calculate_frechet_distance  # pylint: disable=g-import-not-at-top
  # 40 and 30 images of 256-d features: both covariances have rank < 40.
  a = FeatureStatistics.of(_features(6, 40, 256))
  b = FeatureStatistics.of(_features(7, 30, 256, shift=0.5))
  assert np.linalg.matrix_rank(a.sigma) < 40
  value = distances.frechet_distance_eigh(a.mu, a.sigma, b.mu, b.sigma)
  assert np.isfinite(value) and value > 0
  # Our pytorch-fid form follows pytorch-fid whatever scipy's sqrtm gives here.
  try:
    want = calculate_frechet_distance(a.mu, a.sigma, b.mu, b.sigma)
  except ValueError as e:
    with pytest.raises(ValueError, match='imaginary component'):
      distances.frechet_distance(a.mu, a.sigma, b.mu, b.sigma)
    assert 'Imaginary component' in str(e)
  else:
    assert _relative(distances.frechet_distance(a.mu, a.sigma, b.mu, b.sigma), want) < 1e-6


def test_statistics_of_different_widths_are_refused_with_both_widths(tmp_path):
  a, b = FeatureStatistics.of(_features(8, 20, 8)), FeatureStatistics.of(_features(9, 20, 6))
  with pytest.raises(StatisticsMismatchError, match=r'\(8,\) / \(6,\)'):
    distances.frechet_distance_eigh(a.mu, a.sigma, b.mu, b.sigma)
  path = str(tmp_path / 'reference.npz')
  a.save(path)
  with pytest.raises(StatisticsMismatchError, match='8-d features .* these features are 2048-d'):
    load_reference(path, 2048)
  np.savez(str(tmp_path / 'other.npz'), mean=a.mu)
  with pytest.raises(StatisticsMismatchError, match='no `mu` and `sigma`'):
    load_reference(str(tmp_path / 'other.npz'), 8)


def test_saved_statistics_resume_exactly(tmp_path):
  features = _features(10, 90, 16)
  first = FeatureStatistics.of(features[:40])
  first.save(str(tmp_path / 'part.npz'))
  resumed = FeatureStatistics.load(str(tmp_path / 'part.npz')).update(features[40:])
  np.testing.assert_array_equal(resumed.sigma, FeatureStatistics.of(features[:40]).update(
      features[40:]).sigma)
  assert not os.path.exists(str(tmp_path / 'part.npz.partial.npz'))


def _brute_force_mmd2(x, y):
  """The unbiased MMD^2 estimator written out term by term."""
  k = lambda a, b: (np.dot(a, b) / len(a) + 1) ** 3
  m = len(x)
  xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
  yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
  xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
  return xx + yy - 2 * xy


def test_kid_is_the_unbiased_estimator_over_subsets():
  x, y = _features(11, 12, 5), _features(12, 12, 5, shift=0.7)
  kid = distances.kernel_distance(x, y, subsets=3, subset_size=12)
  # Subsets of the whole sets are the sets themselves (in another order): each estimate is exact.
  assert kid.subset_size == 12 and kid.std < 1e-12
  assert _relative(kid.mean, _brute_force_mmd2(x, y)) < 1e-10


def test_kid_is_near_zero_for_one_distribution_and_not_for_two():
  same = distances.kernel_distance(_features(13, 600, 16), _features(14, 600, 16), subsets=50,
                                   subset_size=200)
  other = distances.kernel_distance(_features(13, 600, 16), _features(15, 600, 16, scale=2.0),
                                    subsets=50, subset_size=200)
  assert abs(same.mean) < 4 * same.std  # Unbiased: zero within the subsets' spread.
  assert other.mean > 5 * other.std and other.mean > 10 * abs(same.mean)
  assert other.standard_error == pytest.approx(other.std / np.sqrt(50))


@pytest.fixture(scope='module')
def torch_home(tmp_path_factory):
  return fid_helpers.shared_torch_home(tmp_path_factory)


def test_pytorch_fid_statistics_of_an_image_folder_load_and_match_ours(torch_home, tmp_path,
                                                                       monkeypatch):
  from pytorch_fid import fid_score  # pylint: disable=g-import-not-at-top
  from cm3leon_jax.evaluation.features import inception_features  # pylint: disable=g-import-not-at-top
  from cm3leon_jax.interop import pytorch_fid  # pylint: disable=g-import-not-at-top
  images = (fid_helpers.varied_images(np.random.default_rng(16), 10, 80, 96) * 255).astype(
      np.uint8)
  folder = tmp_path / 'images'
  folder.mkdir()
  for i, image in enumerate(images):
    Image.fromarray(image).save(folder / f'{i}.png')
  monkeypatch.setenv('TORCH_HOME', torch_home)
  theirs_path = str(tmp_path / 'theirs.npz')
  fid_score.save_fid_stats([str(folder), theirs_path], batch_size=5, device='cpu', dims=2048,
                           num_workers=0)
  mu, sigma = load_reference(theirs_path, 2048)
  with np.load(theirs_path) as data:  # Loaded unchanged.
    np.testing.assert_array_equal(mu, data['mu'])
    np.testing.assert_array_equal(sigma, data['sigma'])
  weights = os.path.join(torch_home, 'hub', 'checkpoints', pytorch_fid.WEIGHTS_FILE)
  extract = inception_features(weights, batch_size=5)
  ours = FeatureStatistics.of(extract(images))
  # Same images, same weights: the statistics agree to float32 rounding of the features, and so
  # the distance between them is tiny next to the distance to other images.
  np.testing.assert_allclose(ours.mu, mu, atol=1e-4)
  others = FeatureStatistics.of(extract(images[::-1, ::-1]))
  between = distances.frechet_distance_eigh(ours.mu, ours.sigma, mu, sigma)
  to_others = distances.frechet_distance_eigh(others.mu, others.sigma, mu, sigma)
  assert to_others > 1.0 and between < 1e-5 * to_others
  # And pytorch-fid reads the statistics we write.
  ours_path = str(tmp_path / 'ours.npz')
  ours.save(ours_path)
  their_mu, their_sigma = fid_score.compute_statistics_of_path(ours_path, None, 5, 2048, 'cpu')
  np.testing.assert_array_equal(their_mu, ours.mu)
  np.testing.assert_array_equal(their_sigma, ours.sigma)
