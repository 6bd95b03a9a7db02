"""The synthetic dataset is deterministic and self-consistent, and the judge reads it back."""

import dataclasses

import numpy as np
import pytest

from cm3leon_jax.data.synthetic import COLOURS, SyntheticConfig, SyntheticDataset
from cm3leon_jax.evaluation import synthetic_judge as judge

NUM_JUDGED = 2000


@pytest.mark.parametrize('resolution', [32, 64])
def test_judge_agrees_with_ground_truth(resolution):
  dataset = SyntheticDataset(SyntheticConfig(resolution=resolution))
  examples = list(dataset.examples(0, NUM_JUDGED))
  agree = np.mean([judge.agrees_with_truth(e.image, e.objects) for e in examples])
  captions = np.mean([judge.matches_caption(e.image, e.caption) for e in examples])
  print(f'{resolution}px: judge agrees with ground truth on {agree:.2%}, captions hold on '
        f'{captions:.2%} of {NUM_JUDGED}')
  assert agree >= 0.99 and captions >= 0.99


def test_judge_tolerates_reconstruction_noise():
  dataset = SyntheticDataset()
  rng = np.random.default_rng(0)
  agree = []
  for e in dataset.examples(0, 300):
    noisy = np.clip(e.image + rng.normal(0, 12, e.image.shape), 0, 255)
    agree.append(judge.agrees_with_truth(noisy, e.objects))
  assert np.mean(agree) >= 0.97


def test_examples_are_deterministic_per_seed_and_index():
  a, b = SyntheticDataset()[17], SyntheticDataset()[17]
  assert a.caption == b.caption and np.array_equal(a.image, b.image)
  other = SyntheticDataset(SyntheticConfig(seed=1))[17]
  assert not np.array_equal(a.image, other.image)
  assert SyntheticDataset()[18].caption != a.caption or not np.array_equal(
      SyntheticDataset()[18].image, a.image)


def test_ground_truth_is_consistent_with_the_image():
  for e in SyntheticDataset().examples(0, 200):
    assert 1 <= len(e.objects) <= 3 and e.image.dtype == np.uint8
    for i, obj in enumerate(e.objects):
      ys, xs = np.nonzero(e.segmentation == i + 1)
      assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == obj.box
      assert (e.image[ys, xs] == COLOURS[obj.colour]).all()
    assert not (e.edges & (e.segmentation == 0)).any()
    assert e.edges.sum() < (e.segmentation > 0).sum()
    centres = [o.centre for o in e.objects]
    assert centres == sorted(centres)  # Left to right, as the caption reads.


def test_caption_score_counts_facts():
  e = next(ex for ex in SyntheticDataset().examples(0, 100) if len(ex.objects) == 1)
  assert judge.caption_score(e.image, e.caption) == 1.0
  obj = e.objects[0]
  wrong_colour = next(c for c in COLOURS if c != obj.colour)
  caption = e.caption.replace(f' {obj.colour} ', f' {wrong_colour} ')
  # Facts: count, shape, colour, size, region; only the colour fails.
  assert judge.caption_score(e.image, caption) == pytest.approx(4 / 5)
  blank = np.full_like(e.image, 245)
  assert judge.caption_score(blank, e.caption) == 0.0


def test_parse_caption_and_its_errors():
  parsed = judge.parse_caption('a small red circle left of a large blue square')
  assert parsed.objects == (('small', 'red', 'circle'), ('large', 'blue', 'square'))
  assert parsed.relations == ('left of',) and parsed.region is None
  assert judge.parse_caption('a large green triangle at the top left').region == 'top left'
  with pytest.raises(ValueError, match='names no object'):
    judge.parse_caption('a photo of a dog')
  with pytest.raises(ValueError, match='relates objects by'):
    judge.parse_caption('a small red circle near a large blue square')


@pytest.mark.parametrize('field, value, message', [
    ('resolution', 8, 'resolution must be >= 16'),
    ('max_objects', 4, 'max_objects must be 1, 2 or 3'),
])
def test_bad_config_is_named(field, value, message):
  with pytest.raises(ValueError, match=message):
    dataclasses.replace(SyntheticConfig(), **{field: value})
