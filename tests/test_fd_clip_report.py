"""The FD-CLIP report: every set measured against the same real reference, the real-vs-real
floor below sets that differ from the real images."""

import numpy as np
import pytest

from cm3leon_jax.data.synthetic import SyntheticConfig, SyntheticDataset
from cm3leon_jax.evaluation.clip_metrics import ClipMetrics
from cm3leon_jax.evaluation.fd_clip_report import fd_clip_report
import eval_helpers


@pytest.fixture(scope='module')
def clip(tmp_path_factory):
  folder = tmp_path_factory.mktemp('clip') / 'clip'
  eval_helpers.random_clip(str(folder), seed=2)
  return ClipMetrics(str(folder))


def _real(start, count):
  examples = SyntheticDataset(SyntheticConfig(resolution=32)).examples(start, count)
  return [(e.image, e.caption) for e in examples]


def test_real_images_are_nearer_the_reference_than_noise_and_flat_images(clip):
  reference_pairs = _real(0, 48)
  reference = np.stack([image for image, _ in reference_pairs])
  captions = [caption for _, caption in reference_pairs]
  floor = np.stack([image for image, _ in _real(1000, 48)])
  rng = np.random.default_rng(0)
  noise = rng.integers(0, 256, reference.shape, dtype=np.uint8)
  flat = np.full_like(reference, 128)
  report = fd_clip_report(clip, reference, floor, {'noise': noise, 'flat': flat}, captions)
  assert set(report) == {'real', 'noise', 'flat'}
  assert 0 < report['real']['fd_clip'] < min(report['noise']['fd_clip'], report['flat']['fd_clip'])
  assert all(0 <= report[name]['clip_score'] <= 100 for name in ('real', 'noise', 'flat'))
  # A set equal to the reference is at distance 0 and scores as the reference with its captions.
  copy = fd_clip_report(clip, reference, floor, {'copy': reference.copy()}, captions)
  assert copy['copy']['fd_clip'] == pytest.approx(0, abs=1e-6)
  assert copy['copy']['mean_term'] == pytest.approx(0, abs=1e-9)
  # The mean term is part of the distance: the covariance term is a squared distance, >= 0.
  assert all(0 < report[name]['mean_term'] <= report[name]['fd_clip'] for name in report)
  assert copy['real']['clip_score'] == pytest.approx(copy['copy']['clip_score'], rel=1e-6)
  assert copy['real']['clip_score'] != pytest.approx(report['noise']['clip_score'], rel=1e-3)
  with pytest.raises(ValueError, match='must hold 48 images'):
    fd_clip_report(clip, reference, floor, {'short': noise[:10]})
