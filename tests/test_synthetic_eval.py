"""The quickstart's sample judging: main-object checks, chance, and the paired CFG comparison."""

import numpy as np

from cm3leon_jax.evaluation import synthetic_eval


def test_real_images_show_their_main_object_and_shuffled_captions_rarely_do():
  examples = synthetic_eval.held_out_examples(64, resolution=32)
  images = np.stack([e.image for e in examples])
  captions = [e.caption for e in examples]
  passes = synthetic_eval.main_object_passes(images, captions)
  assert passes.mean() > 0.95
  rates = synthetic_eval.text_to_image_rates(images, captions)
  assert rates['main_object'] == passes.mean()
  assert rates['chance'] < 0.3


def test_derangement_moves_every_index():
  order = synthetic_eval.derangement(50, seed=3)
  assert sorted(order) == list(range(50))
  assert not (order == np.arange(50)).any()


def test_paired_difference_counts_discordant_pairs_and_brackets_the_mean():
  a = np.array([1] * 30 + [0] * 10 + [1] * 60)
  b = np.array([0] * 30 + [1] * 10 + [1] * 60)
  result = synthetic_eval.paired_difference(a, b)
  assert (result['a_only'], result['b_only']) == (30, 10)
  assert result['difference'] == 0.2
  assert result['ci95_low'] < 0.2 < result['ci95_high']
  assert result['ci95_low'] > 0.05  # 30 against 10 discordant pairs: a real difference.
  same = synthetic_eval.paired_difference(a, a)
  assert same['difference'] == same['ci95_low'] == same['ci95_high'] == 0.0


def test_caption_scores_of_real_images_beat_their_shuffled_chance():
  examples = synthetic_eval.held_out_examples(32, resolution=32)
  images = np.stack([e.image for e in examples])
  captions = [e.caption for e in examples]
  rates = synthetic_eval.text_to_image_rates(images, captions)
  assert rates['caption_score'] == synthetic_eval.caption_scores(images, captions).mean() > 0.95
  assert rates['caption_score_chance'] < 0.8
  assert rates['half_the_facts'] == 1.0 > rates['half_the_facts_chance']
