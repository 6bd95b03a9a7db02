"""The built-in synthetic image-caption dataset: coloured shapes on a plain background.

Each example is drawn from (seed, index) alone, so any shard of any size can be regenerated anywhere
and nothing needs downloading. An image holds 1-3 non-touching shapes (circle, square, triangle) in
one of six colours and two sizes; its caption comes from a small grammar:

  a large red circle at the top left
  a small blue square left of a large green triangle above a small yellow circle

(consecutive objects, in left-to-right order, are related by the dominant direction between their
centres). Every example carries its ground truth: object attributes and boxes, a segmentation map
and an edge map, from which the later SFT tasks (editing, control images, grounding, VQA) are made.
Shapes are drawn without anti-aliasing so that a rule-based judge (``evaluation.synthetic_judge``)
can read them back exactly.
"""

import dataclasses
from typing import Dict, List, Tuple

import numpy as np

SHAPES = ('circle', 'square', 'triangle')
COLOURS: Dict[str, Tuple[int, int, int]] = {
    'red': (220, 40, 40), 'green': (40, 170, 60), 'blue': (40, 70, 220),
    'yellow': (235, 210, 40), 'purple': (150, 60, 200), 'orange': (245, 140, 30),
}
BACKGROUND = (245, 245, 245)
SIZES = ('small', 'large')
# Object side as a fraction of the image side, per size word.
SIZE_FRACTIONS = {'small': 0.25, 'large': 0.42}
REGIONS_Y, REGIONS_X = ('top', 'middle', 'bottom'), ('left', 'centre', 'right')


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
  """How examples are drawn. The defaults suit a CPU: 32x32 images, up to 3 objects."""

  resolution: int = 32
  max_objects: int = 3
  seed: int = 0
  gap: int = 2  # Minimum empty pixels between two objects' boxes (keeps them apart for the judge).
  # Layouts whose caption would hang on less than this many pixels (a relation whose horizontal and
  # vertical offsets nearly tie, a centre on a region border) are redrawn, so captions stay true
  # under the small shifts of a reconstruction.
  margin: float = 1.5

  def __post_init__(self):
    if self.resolution < 16:
      raise ValueError(f'SyntheticConfig.resolution must be >= 16 pixels, got {self.resolution}.')
    if not 1 <= self.max_objects <= 3:
      raise ValueError(f'SyntheticConfig.max_objects must be 1, 2 or 3, got {self.max_objects}.')


@dataclasses.dataclass(frozen=True)
class SyntheticObject:
  """One shape: attributes and the tight box (x0, y0, x1, y1) of its pixels, end-exclusive."""

  shape: str
  colour: str
  size: str
  box: Tuple[int, int, int, int]

  @property
  def centre(self) -> Tuple[float, float]:
    x0, y0, x1, y1 = self.box
    return (x0 + x1) / 2, (y0 + y1) / 2

  @property
  def phrase(self) -> str:
    return f'a {self.size} {self.colour} {self.shape}'


@dataclasses.dataclass(frozen=True)
class SyntheticExample:
  """An image, its caption and its ground truth."""

  index: int
  image: np.ndarray  # [H, W, 3] uint8
  caption: str
  objects: Tuple[SyntheticObject, ...]  # Left to right.
  segmentation: np.ndarray  # [H, W] int32: 0 background, i + 1 for objects[i].
  edges: np.ndarray  # [H, W] bool: pixels on an object's boundary.


def shape_mask(shape: str, side: int) -> np.ndarray:
  """[side, side] bool mask of a shape filling its box (pixel centres tested)."""
  centres = (np.arange(side) + 0.5) / side  # In [0, 1].
  y, x = np.meshgrid(centres, centres, indexing='ij')
  if shape == 'circle':
    return (x - 0.5) ** 2 + (y - 0.5) ** 2 <= 0.25
  if shape == 'square':
    return np.ones((side, side), bool)
  if shape == 'triangle':  # Apex at the top centre, base along the bottom.
    return np.abs(x - 0.5) <= y / 2
  raise ValueError(f'Unknown shape {shape!r}; choose one of {SHAPES}.')


def relation(a: SyntheticObject, b: SyntheticObject) -> str:
  """How `a` lies relative to `b`: 'left of', 'right of', 'above' or 'below' (dominant axis)."""
  (ax, ay), (bx, by) = a.centre, b.centre
  if abs(ax - bx) >= abs(ay - by):
    return 'left of' if ax < bx else 'right of'
  return 'above' if ay < by else 'below'


def region(obj: SyntheticObject, resolution: int) -> str:
  """The 3x3 grid cell of an object's centre, e.g. 'top left' or 'middle centre'."""
  x, y = obj.centre
  third = resolution / 3
  return f'{REGIONS_Y[min(int(y // third), 2)]} {REGIONS_X[min(int(x // third), 2)]}'


def caption_for(objects: List[SyntheticObject], resolution: int) -> str:
  """The grammar's caption of objects ordered left to right."""
  if len(objects) == 1:
    return f'{objects[0].phrase} at the {region(objects[0], resolution)}'
  parts = [objects[0].phrase]
  for previous, current in zip(objects, objects[1:]):
    parts.append(f'{relation(previous, current)} {current.phrase}')
  return ' '.join(parts)


class SyntheticDataset:
  """Deterministic, indexable image-caption pairs: ``dataset[i]`` depends only on (seed, i)."""

  def __init__(self, config: SyntheticConfig = SyntheticConfig()):
    self.config = config

  def __getitem__(self, index: int) -> SyntheticExample:
    if index < 0:
      raise IndexError(f'Synthetic example indices are >= 0, got {index}.')
    return self.render(index, self.layout(index))

  def layout(self, index: int) -> List[SyntheticObject]:
    """The objects of example `index` with their drawing boxes (the square each shape fills),
    which `render` takes; edits (``data.sft_synthetic``) change these and render again."""
    return self._place_objects(np.random.default_rng([self.config.seed, index]))

  def examples(self, start: int, count: int):
    """Yield examples start, start + 1, ..., start + count - 1."""
    for index in range(start, start + count):
      yield self[index]

  def _place_objects(self, rng) -> List[SyntheticObject]:
    """Draw attributes and non-touching positions (redrawing the whole layout if it does not fit)."""
    res, gap = self.config.resolution, self.config.gap
    while True:
      count = int(rng.integers(1, self.config.max_objects + 1))
      boxes, objects = [], []
      for _ in range(count):
        size = SIZES[rng.integers(len(SIZES))]
        side = self.side(size)
        box = self._free_box(rng, side, boxes, res, gap)
        if box is None:
          break
        boxes.append(box)
        objects.append(SyntheticObject(SHAPES[rng.integers(len(SHAPES))],
                                       list(COLOURS)[rng.integers(len(COLOURS))], size, box))
      if len(objects) == count:
        objects.sort(key=lambda o: _tight(o).centre)
        if not ambiguous([_tight(o) for o in objects], res, self.config.margin):
          return objects  # Drawing boxes; render stores the tight ones.

  def side(self, size: str) -> int:
    """The drawing box side, in pixels, of an object of `size` ('small' or 'large')."""
    return max(4, round(SIZE_FRACTIONS[size] * self.config.resolution))

  def valid(self, objects: List[SyntheticObject]) -> bool:
    """Whether drawing-box objects make an example as the dataset draws them: inside the image
    (a 1-pixel border), `gap` pixels apart, and with a caption that does not hang on a pixel."""
    res, gap = self.config.resolution, self.config.gap
    boxes = [o.box for o in objects]
    inside = all(1 <= x0 and 1 <= y0 and x1 < res and y1 < res for x0, y0, x1, y1 in boxes)
    apart = all(a[0] >= b[2] + gap or b[0] >= a[2] + gap or a[1] >= b[3] + gap or b[1] >= a[3] + gap
                for i, a in enumerate(boxes) for b in boxes[i + 1:])
    tight = sorted((_tight(o) for o in objects), key=lambda o: o.centre)
    return bool(objects) and inside and apart and not ambiguous(tight, res, self.config.margin)

  @staticmethod
  def _free_box(rng, side, boxes, res, gap, tries=50):
    for _ in range(tries):
      x0, y0 = (int(v) for v in rng.integers(1, res - side, size=2))
      box = (x0, y0, x0 + side, y0 + side)
      if all(box[0] >= b[2] + gap or b[0] >= box[2] + gap or box[1] >= b[3] + gap
             or b[1] >= box[3] + gap for b in boxes):
        return box
    return None

  def render(self, index: int, objects: List[SyntheticObject]) -> SyntheticExample:
    """The example of objects given with drawing boxes, sorted left to right; its objects carry
    the tight boxes of their pixels."""
    objects = sorted(objects, key=lambda o: _tight(o).centre)
    res = self.config.resolution
    image = np.empty((res, res, 3), np.uint8)
    image[:] = BACKGROUND
    segmentation = np.zeros((res, res), np.int32)
    for i, obj in enumerate(objects):
      x0, y0, x1, y1 = obj.box
      mask = shape_mask(obj.shape, x1 - x0)
      image[y0:y1, x0:x1][mask] = COLOURS[obj.colour]
      segmentation[y0:y1, x0:x1][mask] = i + 1
    objects = [_tight(o) for o in objects]
    return SyntheticExample(index, image, caption_for(objects, res), tuple(objects),
                            segmentation, edge_map(segmentation))


def _tight(obj: SyntheticObject) -> SyntheticObject:
  """The object with its box shrunk to the pixels its shape really covers."""
  x0, y0, x1, _ = obj.box
  rows, cols = np.nonzero(shape_mask(obj.shape, x1 - x0))
  box = (x0 + cols.min(), y0 + rows.min(), x0 + cols.max() + 1, y0 + rows.max() + 1)
  return dataclasses.replace(obj, box=tuple(int(v) for v in box))


def ambiguous(objects: List[SyntheticObject], resolution: int, margin: float) -> bool:
  """Whether the caption's words would hang on less than `margin` pixels."""
  for a, b in zip(objects, objects[1:]):
    dx, dy = (abs(p - q) for p, q in zip(a.centre, b.centre))
    if abs(dx - dy) < margin:
      return True
  if len(objects) == 1:
    borders = (resolution / 3, 2 * resolution / 3)
    return any(abs(c - edge) < margin for c in objects[0].centre for edge in borders)
  return False


def edge_map(segmentation: np.ndarray) -> np.ndarray:
  """Pixels whose 4-neighbourhood holds another segment (or the image border, for objects)."""
  padded = np.pad(segmentation, 1, mode='edge')
  centre = padded[1:-1, 1:-1]
  differs = np.zeros_like(centre, bool)
  for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
    differs |= padded[1 + dy:padded.shape[0] - 1 + dy, 1 + dx:padded.shape[1] - 1 + dx] != centre
  return differs & (centre > 0)
