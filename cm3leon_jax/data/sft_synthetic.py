"""Instruction examples over the built-in synthetic scenes, for every SFT task.

Each comes with its ground truth, so the judge (``evaluation.synthetic_judge``) can check a
model's answer by rule:

  edit_example        an instruction in words and the scene before and after it: recolour, move,
                      resize, add or remove one shape ("make the red circle blue")
  control_image       the scene's edge map (white on black) or segmentation map (a colour per
                      shape class) as an RGB image, the control of image-controlled generation
  grounding_objects   each shape's name and box, for spatially grounded generation
  question            a question about the scene and its one true answer, with its type (count,
                      colour, shape, size, exists, where)

Everything is drawn from (seed, index) alone, like the scenes themselves.
"""

import dataclasses
from typing import List, Optional, Sequence, Tuple

import numpy as np

from cm3leon_jax.data import synthetic
from cm3leon_jax.data.synthetic import SyntheticDataset, SyntheticExample, SyntheticObject

EDIT_KINDS = ('recolour', 'move', 'resize', 'add', 'remove')
DIRECTIONS = {'left': (-1, 0), 'right': (1, 0), 'up': (0, -1), 'down': (0, 1)}
CONTROL_KINDS = ('canny', 'segmentation')
# Segmentation maps colour each pixel by its shape's class, as ADE20K-style maps do; black is
# background. Distinct from every object colour, so a map never shows what colour a shape is.
CLASS_COLOURS = {'circle': (255, 0, 255), 'square': (0, 255, 255), 'triangle': (255, 255, 255)}
QUESTION_TYPES = ('count', 'colour', 'shape', 'size', 'exists', 'where')
NUMBER_WORDS = {1: '1', 2: '2', 3: '3'}  # The VQA metric reads answers as digits.
_STREAM = 7  # Separates these draws from the scene's own (seed, index) stream.


@dataclasses.dataclass(frozen=True)
class SyntheticEdit:
  """One edit: the instruction, its kind, and the scenes before and after.

  Attributes:
    target: the edited object's description as the instruction names it ('the red circle'), or
      for 'add' the added object's phrase ('a small blue square').
    changed: the object after the edit as it appears in `after` (None for 'remove').
  """

  instruction: str
  kind: str
  target: str
  before: SyntheticExample
  after: SyntheticExample
  changed: Optional[SyntheticObject]


def _rng(dataset: SyntheticDataset, index: int, purpose: int) -> np.random.Generator:
  return np.random.default_rng([dataset.config.seed, index, _STREAM, purpose])


def name(obj: SyntheticObject, objects: Sequence[SyntheticObject]) -> Optional[str]:
  """The shortest unambiguous name of `obj` among `objects` ('the red circle', 'the large red
  circle'), or None when another object looks the same."""
  same_kind = [o for o in objects if (o.colour, o.shape) == (obj.colour, obj.shape)]
  if len(same_kind) == 1:
    return f'the {obj.colour} {obj.shape}'
  if sum(o.size == obj.size for o in same_kind) == 1:
    return f'the {obj.size} {obj.colour} {obj.shape}'
  return None


def _shifted(obj: SyntheticObject, dx: int, dy: int) -> SyntheticObject:
  x0, y0, x1, y1 = obj.box
  return dataclasses.replace(obj, box=(x0 + dx, y0 + dy, x1 + dx, y1 + dy))


def _resized(dataset: SyntheticDataset, obj: SyntheticObject, size: str) -> SyntheticObject:
  """The object at `size`, its drawing box kept on the same centre."""
  x0, y0, x1, y1 = obj.box
  side = dataset.side(size)
  cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
  return dataclasses.replace(obj, size=size,
                             box=(cx - side // 2, cy - side // 2, cx - side // 2 + side,
                                  cy - side // 2 + side))


def _candidate_edits(dataset, objects, rng) -> List[Tuple[str, str, str, List, Optional[int]]]:
  """(kind, instruction, target, new objects, index of the changed object) for each edit that
  applies, in a random order; the caller keeps the first whose scene is valid."""
  candidates = []
  for i in rng.permutation(len(objects)):
    obj, others = objects[i], objects[:i] + objects[i + 1:]
    called = name(obj, objects)
    if called is None:
      continue
    colour = str(rng.choice([c for c in synthetic.COLOURS if c != obj.colour]))
    candidates.append(('recolour', f'make {called} {colour}', called,
                       others + [dataclasses.replace(obj, colour=colour)], len(others)))
    step = dataset.config.resolution // 4
    for direction in rng.permutation(list(DIRECTIONS)):
      dx, dy = DIRECTIONS[direction]
      candidates.append(('move', f'move {called} {direction}', called,
                         others + [_shifted(obj, dx * step, dy * step)], len(others)))
    size = 'large' if obj.size == 'small' else 'small'
    candidates.append(('resize', f'make {called} {size}', called,
                       others + [_resized(dataset, obj, size)], len(others)))
    if len(objects) > 1:
      candidates.append(('remove', f'remove {called}', called, others, None))
  added = _added(dataset, objects, rng) if len(objects) < dataset.config.max_objects else None
  return candidates + ([('add',) + added] if added else [])


def _added(dataset, objects, rng):
  """An 'add' edit: a new object in free space, clear of the region borders its instruction
  names; None when there is no such space."""
  size = str(rng.choice(synthetic.SIZES))
  res, margin = dataset.config.resolution, dataset.config.margin
  box = dataset._free_box(rng, dataset.side(size), [o.box for o in objects], res,  # pylint: disable=protected-access
                          dataset.config.gap)
  if box is None:
    return None
  new = SyntheticObject(str(rng.choice(synthetic.SHAPES)), str(rng.choice(list(synthetic.COLOURS))),
                        size, box)
  placed = dataset.render(0, [new]).objects[0]
  if synthetic.ambiguous([placed], res, margin):
    return None
  where = synthetic.region(placed, res)
  return (f'add {new.phrase} at the {where}', new.phrase, list(objects) + [new], len(objects))


def edit_example(dataset: SyntheticDataset, index: int, kind: Optional[str] = None
                 ) -> Optional[SyntheticEdit]:
  """The edit of scene `index`, its kind drawn uniformly among those whose result is a valid
  scene (or `kind`); None when the scene admits none (three look-alike shapes and no room)."""
  objects = dataset.layout(index)
  rng = _rng(dataset, index, 0)
  valid = [c for c in _candidate_edits(dataset, objects, rng)
           if dataset.valid(c[3]) and _nameable(c[3], c[4])]
  kinds = [k for k in EDIT_KINDS if any(c[0] == k for c in valid) and kind in (None, k)]
  if not kinds:
    return None
  wanted = kinds[rng.integers(len(kinds))]
  edit_kind, instruction, target, new_objects, changed = next(c for c in valid if c[0] == wanted)
  before = dataset.render(index, objects)
  after = dataset.render(index, new_objects)
  return SyntheticEdit(instruction, edit_kind, target, before, after,
                       None if changed is None else _find(after, new_objects[changed]))


def _nameable(objects, changed) -> bool:
  """The changed object stays the only one of its look, so the judge can find it afterwards."""
  return changed is None or name(objects[changed], objects) is not None


def _find(example: SyntheticExample, drawn: SyntheticObject) -> SyntheticObject:
  """The rendered (tight-box) object drawn as `drawn`."""
  matches = [o for o in example.objects
             if (o.shape, o.colour, o.size) == (drawn.shape, drawn.colour, drawn.size)
             and drawn.box[0] <= o.box[0] and o.box[2] <= drawn.box[2]
             and drawn.box[1] <= o.box[1] and o.box[3] <= drawn.box[3]]
  return matches[0]


def control_image(example: SyntheticExample, kind: str) -> np.ndarray:
  """[H, W, 3] uint8 control image of a scene: 'canny' (edges white on black) or 'segmentation'
  (each shape's pixels in its class colour)."""
  if kind == 'canny':
    return np.repeat(example.edges[..., None], 3, axis=-1).astype(np.uint8) * 255
  if kind == 'segmentation':
    palette = np.zeros((len(example.objects) + 1, 3), np.uint8)
    for i, obj in enumerate(example.objects):
      palette[i + 1] = CLASS_COLOURS[obj.shape]
    return palette[example.segmentation]
  raise ValueError(f'Unknown synthetic control {kind!r}; choose one of {CONTROL_KINDS}.')


def grounding_objects(example: SyntheticExample) -> List[Tuple[str, Tuple[int, int, int, int]]]:
  """Each shape as ('red circle', tight box), left to right."""
  return [(f'{o.colour} {o.shape}', o.box) for o in example.objects]


def question(dataset: SyntheticDataset, index: int) -> Tuple[str, str, str]:
  """(question, answer, question type) about scene `index`, the type drawn among those its scene
  can answer without ambiguity."""
  example = dataset[index]
  rng = _rng(dataset, index, 1)
  options = _questions(example, dataset.config, rng)
  kinds = [k for k in QUESTION_TYPES if k in options]
  kind = kinds[rng.integers(len(kinds))]
  return options[kind] + (kind,)


def _questions(example: SyntheticExample, config, rng) -> dict:
  """{type: (question, answer)} for every type the scene answers unambiguously."""
  objects = list(example.objects)
  options = {'count': ('how many shapes are there?', NUMBER_WORDS[len(objects)])}
  obj = objects[rng.integers(len(objects))]
  shapes = [o.shape for o in objects]
  colours = [o.colour for o in objects]
  if shapes.count(obj.shape) == 1:
    options['colour'] = (f'what colour is the {obj.shape}?', obj.colour)
  if colours.count(obj.colour) == 1:
    options['shape'] = (f'what shape is the {obj.colour} object?', obj.shape)
  if colours.count(obj.colour) == 1:
    options['size'] = (f'what size is the {obj.colour} {obj.shape}?', obj.size)
  present = {(o.colour, o.shape) for o in objects}
  if rng.random() < 0.5:
    colour, shape = obj.colour, obj.shape
  else:
    absent = [(c, s) for c in synthetic.COLOURS for s in synthetic.SHAPES if (c, s) not in present]
    colour, shape = absent[rng.integers(len(absent))]
  options['exists'] = (f'is there a {colour} {shape}?', 'yes' if (colour, shape) in present
                       else 'no')
  if len(objects) == 1:  # Only single shapes are drawn clear of the region borders.
    options['where'] = (f'where is the {obj.shape}?', synthetic.region(obj, config.resolution))
  return options
