"""Judge a model's text-to-image samples and captions on held-out synthetic examples.

The criterion, for both directions, is the caption's main object (its first large object, else its
first): a generated image passes when the judge finds an object of that shape and colour in it; a
generated caption passes when its own main object has the shape and colour of the image's. Chance
is the same rate with the captions shuffled among the examples (a derangement), so it keeps the
data's mix of shapes and colours.
"""

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from cm3leon_jax.decoding import generation
from cm3leon_jax.data import synthetic
from cm3leon_jax.decoding import DecodingConfig
from cm3leon_jax.evaluation.synthetic_judge import caption_score, parse_caption, read_objects
from cm3leon_jax.decoding.pretrained import Pretrained

# Held-out examples: past the validation split's offset (10M) and its sizes in the quickstart.
HELD_OUT_START = 15_000_000


def main_object(objects: Sequence[synthetic.SyntheticObject]) -> synthetic.SyntheticObject:
  """The object a caption is mainly about: its first large object, else its first."""
  return next((o for o in objects if o.size == 'large'), objects[0])


def _caption_main(caption: str) -> Optional[Tuple[str, str]]:
  """(shape, colour) of a caption's main object; None if the caption is not of the grammar."""
  try:
    objects = parse_caption(caption).objects
  except ValueError:
    return None
  size, colour, shape = next((o for o in objects if o[0] == 'large'), objects[0])
  return shape, colour


def image_shows_main_object(image: np.ndarray, caption: str) -> bool:
  """Whether the judge finds the caption's main object (shape and colour) in the image."""
  wanted = _caption_main(caption)
  return wanted is not None and wanted in {(o.shape, o.colour) for o in read_objects(image)}


def caption_names_main_object(caption: str, objects: Sequence[synthetic.SyntheticObject]) -> bool:
  """Whether a caption's main object has the shape and colour of the image's main object."""
  truth = main_object(objects)
  return _caption_main(caption) == (truth.shape, truth.colour)


def derangement(count: int, seed: int = 0) -> np.ndarray:
  """A permutation of range(count) without fixed points (count >= 2)."""
  rng = np.random.default_rng(seed)
  while True:
    order = rng.permutation(count)
    if not (order == np.arange(count)).any():
      return order


def held_out_examples(count: int, resolution: int, start: int = HELD_OUT_START):
  """`count` synthetic examples no split of the quickstart uses."""
  dataset = synthetic.SyntheticDataset(synthetic.SyntheticConfig(resolution=resolution))
  return list(dataset.examples(start, count))


def main_object_passes(images: np.ndarray, captions: Sequence[str]) -> np.ndarray:
  """Per image [P], whether it shows its caption's main object."""
  return np.array([image_shows_main_object(i, c) for i, c in zip(images, captions)])


def caption_scores(images: np.ndarray, captions: Sequence[str]) -> np.ndarray:
  """Per image [P], the fraction of its caption's facts it satisfies (synthetic_judge)."""
  return np.array([caption_score(i, c) for i, c in zip(images, captions)])


def half_the_facts(images: np.ndarray, captions: Sequence[str]) -> np.ndarray:
  """Per image [P], whether it satisfies at least half of its caption's facts."""
  return caption_scores(images, captions) >= 0.5


def paired_difference(a: np.ndarray, b: np.ndarray, draws: int = 10_000,
                      seed: int = 0) -> Dict[str, float]:
  """Mean of a - b over paired outcomes (0/1 or scores), with a 95% bootstrap interval.

  Pairs share a prompt, so resampling prompts (not the two arms separately) keeps the pairing;
  `a_only` / `b_only` count the prompts only one arm passed (McNemar's discordant pairs).
  """
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  rng = np.random.default_rng(seed)
  picks = rng.integers(0, len(a), size=(draws, len(a)))
  means = (a[picks] - b[picks]).mean(axis=1)
  low, high = np.percentile(means, [2.5, 97.5])
  return {'difference': float((a - b).mean()), 'ci95_low': float(low), 'ci95_high': float(high),
          'a_only': int(((a == 1) & (b == 0)).sum()), 'b_only': int(((a == 0) & (b == 1)).sum())}


def text_to_image_rates(images: np.ndarray, captions: Sequence[str]) -> Dict[str, float]:
  """Rates of images [P, ...]: main object, at least half the facts, mean caption score.

  Each comes with its chance level, the same measure against shuffled captions ('chance' is the
  main object's).
  """
  shuffled = [captions[i] for i in derangement(len(captions))]
  return {'main_object': float(np.mean(main_object_passes(images, captions))),
          'chance': float(np.mean(main_object_passes(images, shuffled))),
          'half_the_facts': float(np.mean(half_the_facts(images, captions))),
          'half_the_facts_chance': float(np.mean(half_the_facts(images, shuffled))),
          'caption_score': float(np.mean(caption_scores(images, captions))),
          'caption_score_chance': float(np.mean(caption_scores(images, shuffled)))}


def evaluate_text_to_image(pretrained: Pretrained, captions: Sequence[str],
                           config: DecodingConfig, batch_size: int = 32
                           ) -> Tuple[Dict[str, float], np.ndarray]:
  """(rates, uint8 images [P, H, W, 3]): one sample per caption with `config`."""
  images = []
  for start in range(0, len(captions), batch_size):
    batch, _ = generation.text_to_image(pretrained, captions[start:start + batch_size], config)
    images.append(batch[:, 0])
  images = np.concatenate(images)
  return text_to_image_rates(images, captions), images


def evaluate_captioning(pretrained: Pretrained, examples, config: DecodingConfig,
                        batch_size: int = 32) -> Tuple[Dict[str, float], List[str]]:
  """(rates, generated captions) for synthetic examples' images."""
  resolution = pretrained.image_tokenizer.config.resolution
  captions = []
  for start in range(0, len(examples), batch_size):
    chunk = examples[start:start + batch_size]
    pixels = np.stack([e.image for e in chunk])  # uint8; the tokenizer rescales it.
    if pixels.shape[1] != resolution:
      raise ValueError(f'Examples are {pixels.shape[1]} px but the tokenizer takes {resolution}.')
    ids = pretrained.encode_images(pixels)
    captions += [row[0] for row in generation.caption(pretrained, ids, config)]
  objects = [e.objects for e in examples]
  shuffled = [objects[i] for i in derangement(len(objects))]
  rates = {'main_object': float(np.mean([caption_names_main_object(c, o)
                                         for c, o in zip(captions, objects)])),
           'chance': float(np.mean([caption_names_main_object(c, o)
                                    for c, o in zip(captions, shuffled)])),
           'parsable': float(np.mean([_caption_main(c) is not None for c in captions]))}
  return rates, captions
