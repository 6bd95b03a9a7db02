"""Where the captions and real images of a zero-shot FID evaluation come from.

A source gives the prompts (one caption per evaluated image, in a fixed order) and the real
images whose statistics the samples are compared with:

- ``CocoVal2014``: MS-COCO val2014 through tensorflow-datasets' ``coco_captions``, whose Karpathy
  val, test and restval splits together are the 40,504 val2014 images. `num_captions` images
  (the paper: 30,000) are drawn with a seeded permutation and one of each image's captions with
  a seeded choice; the reference statistics are those of every val2014 image.
- ``SyntheticPrompts``: held-out examples of the built-in synthetic dataset, whose own images are
  the reference and whose captions the synthetic judge can check.
- ``CaptionFile``: a text file of one caption per line, or JSONL with "text" (and optionally
  "image", a path relative to the file, for the reference images).
Images come back as uint8 arrays of their stored size; the protocol resizes them.
"""

import dataclasses
import json
import os
from typing import Any, Dict, Iterator, List, Optional, Sequence

import numpy as np
from absl import logging

from cm3leon_jax.data import images as image_lib
from cm3leon_jax.data.sources import CocoCaptionsSource
from cm3leon_jax.evaluation import synthetic_eval

# tfds coco_captions' Karpathy splits that hold the val2014 images (5,000 + 5,000 + 30,504).
VAL2014_SPLITS = ('val', 'test', 'restval')


@dataclasses.dataclass(frozen=True)
class Prompt:
  """One evaluated caption: its position in the protocol, its image's id, the text."""

  index: int
  image_id: str
  caption: str


class CocoVal2014:
  """Captions and images of MS-COCO val2014 (tfds ``coco_captions``, prepared in `data_dir`)."""

  name = 'coco_val2014'

  def __init__(self, num_captions: int = 30_000, seed: int = 0, data_dir: Optional[str] = None,
               splits: Sequence[str] = VAL2014_SPLITS):
    self.num_captions, self.seed, self.data_dir = num_captions, seed, data_dir
    self.splits = tuple(splits)
    self.skipped = 0  # Images without a usable caption.

  def _records(self):
    for split in self.splits:
      source = CocoCaptionsSource(split, self.data_dir)
      yield from source.read(0, source.num_records())

  def prompts(self) -> List[Prompt]:
    """`num_captions` images drawn with a seeded permutation, one seeded caption each."""
    candidates = []
    for record in self._records():
      texts = [t for t in record.texts if t.strip()]
      if record.error or not texts:
        self.skipped += 1
        continue
      candidates.append((record.id, texts))
    rng = np.random.default_rng(self.seed)
    order = rng.permutation(len(candidates))[:self.num_captions]
    return [Prompt(i, candidates[j][0], candidates[j][1][rng.integers(len(candidates[j][1]))])
            for i, j in enumerate(order)]

  def reference_images(self) -> Iterator[np.ndarray]:
    """Every val2014 image (all splits), as stored."""
    for record in self._records():
      if not record.error and record.image is not None:
        yield np.asarray(record.image)

  def reference_images_description(self) -> Dict[str, Any]:
    """What identifies the reference images (the cache key of their statistics)."""
    return {'source': self.name, 'tfds_splits': list(self.splits), 'data_dir': self.data_dir}

  def describe(self) -> Dict[str, Any]:
    return {**self.reference_images_description(), 'num_captions': self.num_captions,
            'seed': self.seed, 'caption_choice': 'one caption per image, seeded'}


class SyntheticPrompts:
  """Held-out synthetic examples (captions the synthetic judge can check)."""

  name = 'synthetic'

  def __init__(self, count: int, resolution: int, start: int = synthetic_eval.HELD_OUT_START):
    self.count, self.resolution, self.start = count, resolution, start
    self.skipped = 0
    self._examples = synthetic_eval.held_out_examples(count, resolution, start)

  def prompts(self) -> List[Prompt]:
    return [Prompt(i, f'synthetic/{e.index}', e.caption) for i, e in enumerate(self._examples)]

  def reference_images(self) -> Iterator[np.ndarray]:
    for example in self._examples:
      yield np.asarray(example.image)

  def reference_images_description(self) -> Dict[str, Any]:
    """What identifies the reference images (the cache key of their statistics)."""
    return self.describe()

  def describe(self) -> Dict[str, Any]:
    return {'source': self.name, 'count': self.count, 'resolution': self.resolution,
            'start': self.start}


class CaptionFile:
  """Captions from a .txt file (one per line) or a .jsonl file ({"text": ..., "image": ...})."""

  name = 'caption_file'

  def __init__(self, path: str, num_captions: Optional[int] = None):
    if not os.path.isfile(path):
      raise FileNotFoundError(f'Caption file {path} does not exist.')
    self.path, self.num_captions = os.path.abspath(path), num_captions
    self.skipped = 0
    self._entries = self._read()

  def _read(self) -> List[Dict[str, Any]]:
    entries, empty = [], []
    with open(self.path, encoding='utf-8') as f:
      for number, line in enumerate(f, start=1):
        entry = self._parse(line, number)
        if entry is None or not entry['text'].strip():
          empty.append(number)
          continue
        entries.append(entry)
    if empty:
      self.skipped = len(empty)
      logging.warning('%s: skipped %d empty caption lines (lines %s%s).', self.path, len(empty),
                      ', '.join(map(str, empty[:10])), ', ...' if len(empty) > 10 else '')
    return entries[:self.num_captions]

  def _parse(self, line: str, number: int) -> Optional[Dict[str, Any]]:
    if not self.path.endswith('.jsonl'):
      return {'text': line.strip()} if line.strip() else None
    if not line.strip():
      return None
    try:
      entry = json.loads(line)
    except json.JSONDecodeError as e:
      raise ValueError(f'{self.path}, line {number}: not valid JSON ({e}).') from e
    if not isinstance(entry, dict) or not isinstance(entry.get('text', ''), str):
      raise ValueError(f'{self.path}, line {number}: expected an object with a "text" string.')
    return {'text': entry.get('text', ''), 'image': entry.get('image'),
            'id': str(entry.get('id', f'line{number}'))}

  def prompts(self) -> List[Prompt]:
    return [Prompt(i, entry.get('id', f'{i}'), entry['text'].strip())
            for i, entry in enumerate(self._entries)]

  def reference_images(self) -> Iterator[np.ndarray]:
    root = os.path.dirname(self.path)
    for entry in self._entries:
      if entry.get('image'):
        yield np.asarray(image_lib.load_image(os.path.join(root, entry['image'])))

  def reference_images_description(self) -> Dict[str, Any]:
    """What identifies the reference images (the cache key of their statistics)."""
    return {'source': self.name, 'path': self.path, 'num_captions': len(self._entries),
            'modified': os.path.getmtime(self.path)}

  def describe(self) -> Dict[str, Any]:
    return {'source': self.name, 'path': self.path, 'num_captions': len(self._entries),
            'skipped_empty_lines': self.skipped}


def resize_for_reference(image: np.ndarray, resolution: int) -> np.ndarray:
  """A real image as the generated ones are sized: short side to `resolution` (LANCZOS),
  centre-cropped, uint8 [resolution, resolution, 3] (the preprocessing of the training data)."""
  return image_lib.postprocess(image_lib.preprocess(image_lib.load_array(image), resolution))


REFERENCE_PREPROCESSING = ('short side resized to the samples\' resolution with LANCZOS, centre '
                           'crop, uint8 (cm3leon_jax.data.images.preprocess)')
