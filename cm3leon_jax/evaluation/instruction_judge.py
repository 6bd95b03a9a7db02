"""Rule-based judges of the instruction tasks on the synthetic scenes (``data.sft_synthetic``).

They read shapes from pixels with ``synthetic_judge.read_objects``:

  edit_judgement      the asked change made (what the edit adds is there, what it takes away is
                      gone) and the rest of the scene kept (every untouched shape still in place)
  grounding_passes    each named shape found with its box overlapping the asked box (IoU > 0.5)
  control_agreement   IoU of the shapes' pixels in the sample and in the scene the control map
                      was made from (edges and segmentation both outline them)
  vqa_score           the official VQA accuracy with the one true answer given by all ten
                      annotators: exact match after the official normalisation
"""

import collections
import dataclasses
from typing import Sequence, Tuple

import numpy as np

from cm3leon_jax.data import synthetic
from cm3leon_jax.data.sft_synthetic import SyntheticEdit
from cm3leon_jax.evaluation import vqa_accuracy
from cm3leon_jax.evaluation.synthetic_judge import read_objects

POSITION_TOLERANCE = 2.0  # Pixels a read shape's centre may lie from where it should be.
MIN_IOU = 0.5
VQA_ANNOTATORS = 10


@dataclasses.dataclass(frozen=True)
class EditJudgement:
  """Whether an edited image made the asked change and kept the rest of the scene."""

  change_made: bool
  rest_kept: bool

  @property
  def passes(self) -> bool:
    return self.change_made and self.rest_kept


def _key(obj) -> Tuple:
  return obj.shape, obj.colour, obj.size, tuple(obj.box)


def _seen(obj, found) -> bool:
  """Whether a shape like `obj` (attributes, centre within tolerance) was read from the image."""
  return any((f.shape, f.colour, f.size) == (obj.shape, obj.colour, obj.size) and
             max(abs(a - b) for a, b in zip(f.centre, obj.centre)) <= POSITION_TOLERANCE
             for f in found)


def edit_judgement(image: np.ndarray, edit: SyntheticEdit) -> EditJudgement:
  """Judge an image produced for `edit` (uint8 [H, W, 3])."""
  before = collections.Counter(_key(o) for o in edit.before.objects)
  after = collections.Counter(_key(o) for o in edit.after.objects)
  by_key = {_key(o): o for o in edit.before.objects + edit.after.objects}
  added = [by_key[k] for k in (after - before).elements()]
  removed = [by_key[k] for k in (before - after).elements()]
  kept = [by_key[k] for k in (before & after).elements()]
  found = read_objects(image)
  change_made = all(_seen(o, found) for o in added) and not any(_seen(o, found) for o in removed)
  return EditJudgement(change_made, all(_seen(o, found) for o in kept))


def iou(a: Sequence[float], b: Sequence[float]) -> float:
  """Intersection over union of two boxes (x0, y0, x1, y1)."""
  width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
  height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
  inter = width * height
  union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
  return inter / union if union > 0 else 0.0


def grounding_passes(image: np.ndarray,
                     objects: Sequence[Tuple[str, Sequence[float]]]) -> bool:
  """Whether every ('colour shape', box) has a shape of that colour and kind read from the image
  whose box overlaps it with IoU > 0.5 (boxes in the image's pixels)."""
  found = read_objects(image)
  for name, box in objects:
    colour, shape = name.split()
    if not any((f.colour, f.shape) == (colour, shape) and iou(f.box, box) > MIN_IOU
               for f in found):
      return False
  return True


def _shape_pixels(image: np.ndarray) -> np.ndarray:
  """[H, W] bool: pixels nearer an object colour than the background."""
  image = np.asarray(image, np.float32)
  palette = np.array([synthetic.BACKGROUND] + list(synthetic.COLOURS.values()), np.float32)
  return ((image[:, :, None, :] - palette) ** 2).sum(-1).argmin(-1) > 0


def control_agreement(image: np.ndarray, scene: synthetic.SyntheticExample) -> float:
  """IoU of the shapes' pixels in the sample and in the scene its control map shows."""
  sample, truth = _shape_pixels(image), scene.segmentation > 0
  union = (sample | truth).sum()
  return float((sample & truth).sum() / union) if union else 1.0


def vqa_score(prediction: str, answer: str) -> float:
  """The official VQA accuracy of a prediction when all annotators gave `answer`."""
  return vqa_accuracy.question_accuracy(prediction, [answer] * VQA_ANNOTATORS)
