"""A rule-based judge of synthetic-dataset images: reads shapes back and scores captions.

No learned model: each pixel takes the nearest palette colour (or background), connected regions of
one colour are objects, and an object's shape follows from its bounding box: a triangle (apex up)
is narrow at the top and fills about half its box, a square fills the box's corners, a circle leaves
them empty. Sizes come from the box side, positions from its centre.
This is robust to the blur and colour drift of a VQ-GAN reconstruction or a sampled image, which is
what lets later issues judge generated images against their captions.
"""

import dataclasses
import itertools
import re
from typing import List, Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage

from cm3leon_jax.data import synthetic

_PALETTE_NAMES = ('background',) + tuple(synthetic.COLOURS)
_PALETTE = np.array([synthetic.BACKGROUND] + list(synthetic.COLOURS.values()), np.float32)
_CIRCLE_FILL = 0.66  # Below this share of its box a region is a triangle (circles fill ~0.79).
_SQUARE_CORNERS = 0.6  # Share of the box's corner blocks covered above which a region is a square.
_TRIANGLE_TAPER = 0.6  # Top-third over bottom-third area below which a region is a triangle.
_MIN_AREA_FRACTION = 0.02  # Regions smaller than this share of the image are noise.
_PHRASE = re.compile(r'a (small|large) (\w+) (circle|square|triangle)')
_RELATIONS = ('left of', 'right of', 'above', 'below')


@dataclasses.dataclass(frozen=True)
class DetectedObject:
  """An object read from an image."""

  shape: str
  colour: str
  size: str
  box: Tuple[int, int, int, int]  # x0, y0, x1, y1 (end-exclusive).

  @property
  def centre(self) -> Tuple[float, float]:
    x0, y0, x1, y1 = self.box
    return (x0 + x1) / 2, (y0 + y1) / 2


def read_objects(image: np.ndarray) -> List[DetectedObject]:
  """Objects in an [H, W, 3] uint8 (or [0, 255] float) image, left to right."""
  image = np.asarray(image, np.float32)
  resolution = image.shape[0]
  distances = ((image[:, :, None, :] - _PALETTE) ** 2).sum(-1)
  labels = distances.argmin(-1)
  min_area = _MIN_AREA_FRACTION * image.shape[0] * image.shape[1]
  objects = []
  for colour_index in range(1, len(_PALETTE)):
    regions, count = ndimage.label(labels == colour_index)
    for region_slice, region_id in zip(ndimage.find_objects(regions), range(1, count + 1)):
      mask = regions[region_slice] == region_id
      if mask.sum() >= min_area:
        objects.append(_describe(region_slice, mask, _PALETTE_NAMES[colour_index], resolution))
  return sorted(objects, key=lambda o: o.centre)


def _describe(region_slice, mask, colour, resolution) -> DetectedObject:
  ys, xs = region_slice
  height, width = mask.shape
  fill = mask.sum() / (height * width)
  # A triangle (apex up) is far narrower in its top third than in its bottom third; circles and
  # squares are symmetric. This survives the blur that rounds a small triangle's corners and
  # pushes its fill ratio towards a circle's.
  third = max(1, height // 3)
  taper = mask[:third].sum() / max(1, mask[-third:].sum())
  if taper < _TRIANGLE_TAPER or fill < _CIRCLE_FILL:
    shape = 'triangle'
  else:
    # Squares fill their box's corners, circles leave them empty; this survives blurred corners
    # better than the fill ratio alone does.
    shape = 'square' if _corner_fill(mask) > _SQUARE_CORNERS else 'circle'
  threshold = resolution * sum(synthetic.SIZE_FRACTIONS.values()) / 2
  size = 'large' if max(height, width) > threshold else 'small'
  return DetectedObject(shape, colour, size, (xs.start, ys.start, xs.stop, ys.stop))


def _corner_fill(mask: np.ndarray) -> float:
  """Mean coverage of the four corner blocks (a quarter of each side) of a region's box."""
  h, w = mask.shape
  bh, bw = max(1, h // 4), max(1, w // 4)
  corners = (mask[:bh, :bw], mask[:bh, -bw:], mask[-bh:, :bw], mask[-bh:, -bw:])
  return float(np.mean([c.mean() for c in corners]))


def agrees_with_truth(image: np.ndarray, truth: Sequence[synthetic.SyntheticObject],
                      position_tolerance: float = 2.0) -> bool:
  """Whether the objects read from `image` are exactly `truth` (attributes, centres within tol)."""
  found = read_objects(image)
  if len(found) != len(truth):
    return False
  remaining = list(found)
  for obj in truth:
    match = next((f for f in remaining if (f.shape, f.colour, f.size) ==
                  (obj.shape, obj.colour, obj.size) and
                  max(abs(a - b) for a, b in zip(f.centre, obj.centre)) <= position_tolerance),
                 None)
    if match is None:
      return False
    remaining.remove(match)
  return True


@dataclasses.dataclass(frozen=True)
class ParsedCaption:
  """A caption of the synthetic grammar: object phrases, relations between consecutive ones, or a
  region for a single object."""

  objects: Tuple[Tuple[str, str, str], ...]  # (size, colour, shape)
  relations: Tuple[str, ...]
  region: Optional[str]


def parse_caption(caption: str) -> ParsedCaption:
  """Parse a caption of the synthetic grammar; raises ValueError naming what is not understood."""
  text = caption.strip().lower()
  phrases = list(_PHRASE.finditer(text))
  if not phrases:
    raise ValueError(f'Caption {caption!r} names no object of the synthetic grammar '
                     '("a <small|large> <colour> <circle|square|triangle>").')
  objects = tuple(m.groups() for m in phrases)
  relations = tuple(text[a.end():b.start()].strip() for a, b in zip(phrases, phrases[1:]))
  unknown = [r for r in relations if r not in _RELATIONS]
  if unknown:
    raise ValueError(f'Caption {caption!r} relates objects by {unknown}; known: {_RELATIONS}.')
  tail = text[phrases[-1].end():].strip()
  region = tail[len('at the '):] if tail.startswith('at the ') else None
  return ParsedCaption(objects, relations, region)


def caption_score(image: np.ndarray, caption: str) -> float:
  """Fraction of the caption's facts that the image satisfies, in [0, 1].

  Facts: the number of objects; each object's shape, colour and size; each relation between
  consecutive objects (or the single object's region). The best assignment of caption objects to
  objects in the image counts.
  """
  parsed = parse_caption(caption)
  found = read_objects(image)
  resolution = np.asarray(image).shape[0]
  total = 1 + 3 * len(parsed.objects) + len(parsed.relations) + (parsed.region is not None)
  best = 0
  for chosen in itertools.permutations(found, min(len(found), len(parsed.objects))):
    best = max(best, _facts_held(parsed, chosen, resolution))
  return (best + (len(found) == len(parsed.objects))) / total


def _facts_held(parsed: ParsedCaption, chosen, resolution) -> int:
  held = 0
  for (size, colour, shape), obj in zip(parsed.objects, chosen):
    held += (obj.size == size) + (obj.colour == colour) + (obj.shape == shape)
  as_truth = [synthetic.SyntheticObject(o.shape, o.colour, o.size, o.box) for o in chosen]
  for i, wanted in enumerate(parsed.relations):
    if i + 1 < len(as_truth):
      held += synthetic.relation(as_truth[i], as_truth[i + 1]) == wanted
  if parsed.region is not None and as_truth:
    held += synthetic.region(as_truth[0], resolution) == parsed.region
  return held


def matches_caption(image: np.ndarray, caption: str) -> bool:
  """Whether the image satisfies every fact of the caption."""
  return caption_score(image, caption) == 1.0
