"""Instruction examples over the synthetic scenes: each edit, control map, box and answer is true
of the images, as the rule-based judge reads them from the pixels."""

import collections
import re

import numpy as np
import pytest

from data_helpers import synthetic_edits
from cm3leon_jax.data import sft_synthetic, synthetic
from cm3leon_jax.data.synthetic import SyntheticDataset
from cm3leon_jax.evaluation.synthetic_judge import agrees_with_truth, read_objects

SCENES = 150


@pytest.fixture(scope='module')
def dataset():
  return SyntheticDataset()


@pytest.fixture(scope='module')
def edits(dataset):
  return synthetic_edits(dataset, SCENES)


def _key(obj):
  return obj.shape, obj.colour, obj.size, obj.box


def test_every_kind_of_edit_is_drawn_and_both_images_are_what_the_judge_reads(edits):
  assert len(edits) >= SCENES * 0.97
  assert set(collections.Counter(e.kind for e in edits)) == set(sft_synthetic.EDIT_KINDS)
  for edit in edits:
    assert agrees_with_truth(edit.before.image, edit.before.objects)
    assert agrees_with_truth(edit.after.image, edit.after.objects)


DIRECTIONS = {'left': (-1, 0), 'right': (1, 0), 'up': (0, -1), 'down': (0, 1)}


def _check_added(edit, gone, new, step):
  assert not gone and len(new) == 1 and edit.instruction.startswith(f'add {edit.target} at')
  assert edit.changed.phrase == edit.target


def _check_removed(edit, gone, new, step):
  assert not new and edit.changed is None and len(gone) == 1


def _check_recoloured(edit, gone, new, step):
  (old,), (changed,) = gone, new
  assert changed[1] == edit.instruction.split()[-1] != old[1] and changed[::2] == old[::2]


def _check_resized(edit, gone, new, step):
  (old,), (changed,) = gone, new
  assert changed[2] == edit.instruction.split()[-1] != old[2] and changed[:2] == old[:2]


def _check_moved(edit, gone, new, step):
  """The same shape, shifted one step in the direction named."""
  (old,), (changed,) = gone, new
  dx, dy = DIRECTIONS[edit.instruction.split()[-1]]
  np.testing.assert_array_equal(np.subtract(changed[3], old[3]), [dx * step, dy * step] * 2)


EDIT_CHECKS = {'add': _check_added, 'remove': _check_removed, 'recolour': _check_recoloured,
               'resize': _check_resized, 'move': _check_moved}


def test_each_edit_changes_what_its_instruction_says_and_keeps_the_rest(edits, dataset):
  step = dataset.config.resolution // 4
  assert {e.kind for e in edits} == set(EDIT_CHECKS)
  for edit in edits:
    before = collections.Counter(_key(o) for o in edit.before.objects)
    after = collections.Counter(_key(o) for o in edit.after.objects)
    gone, new = list((before - after).elements()), list((after - before).elements())
    EDIT_CHECKS[edit.kind](edit, gone, new, step)
    # Every edit but an addition names the one shape it changes, as the judge can find it.
    named = [f'the {colour} {shape}' for shape, colour, _, _ in gone] + [
        f'the {size} {colour} {shape}' for shape, colour, size, _ in gone]
    assert edit.target in named or (edit.kind == 'add' and edit.target == edit.changed.phrase)
    # The edited shape (if any) is the one the rendered scene holds.
    assert [_key(edit.changed)] == new if new else edit.changed is None


def test_edits_are_drawn_from_the_scene_index_alone(dataset, edits):
  again = sft_synthetic.edit_example(dataset, edits[3].before.index)
  assert again.instruction == edits[3].instruction
  np.testing.assert_array_equal(again.after.image, edits[3].after.image)


def test_control_images_show_edges_and_shape_classes_only(dataset):
  for index in range(20):
    example = dataset[index]
    canny = sft_synthetic.control_image(example, 'canny')
    assert canny.dtype == np.uint8 and canny.shape == example.image.shape
    np.testing.assert_array_equal(canny[..., 0] == 255, example.edges)
    segmentation = sft_synthetic.control_image(example, 'segmentation')
    for i, obj in enumerate(example.objects):
      pixels = segmentation[example.segmentation == i + 1]
      assert (pixels == sft_synthetic.CLASS_COLOURS[obj.shape]).all()
    assert (segmentation[example.segmentation == 0] == 0).all()
  with pytest.raises(ValueError, match='depth'):
    sft_synthetic.control_image(dataset[0], 'depth')


def test_grounding_boxes_hold_each_shapes_pixels(dataset):
  for index in range(20):
    example = dataset[index]
    for i, (label, (x0, y0, x1, y1)) in enumerate(sft_synthetic.grounding_objects(example)):
      mask = example.segmentation == i + 1
      ys, xs = np.nonzero(mask)
      assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x0, y0, x1, y1)
      assert label == f'{example.objects[i].colour} {example.objects[i].shape}'


def _count_answer(text, seen, resolution):
  return str(len(seen))


def _exists_answer(text, seen, resolution):
  colour, shape = re.match(r'is there a (\w+) (\w+)\?', text).groups()
  return 'yes' if any((o.colour, o.shape) == (colour, shape) for o in seen) else 'no'


def _colour_answer(text, seen, resolution):
  (match,) = [o for o in seen if o.shape == re.search(r'the (\w+)\?$', text).group(1)]
  return match.colour


def _shape_answer(text, seen, resolution):
  (match,) = [o for o in seen if o.colour == re.search(r'the (\w+) object\?$', text).group(1)]
  return match.shape


def _size_answer(text, seen, resolution):
  named = re.search(r'the (\w+) (\w+)\?$', text).groups()
  (match,) = [o for o in seen if (o.colour, o.shape) == named]
  return match.size


def _where_answer(text, seen, resolution):
  (only,) = seen  # Where-questions are asked of single shapes.
  return synthetic.region(only, resolution)


ANSWERS_FROM_PIXELS = {'count': _count_answer, 'exists': _exists_answer, 'colour': _colour_answer,
                       'shape': _shape_answer, 'size': _size_answer, 'where': _where_answer}


def test_every_answer_is_true_of_the_pixels(dataset):
  kinds = collections.Counter()
  for index in range(300):
    text, answer, kind = sft_synthetic.question(dataset, index)
    kinds[kind] += 1
    seen = read_objects(dataset[index].image)
    assert answer == ANSWERS_FROM_PIXELS[kind](text, seen, dataset.config.resolution), text
  assert set(kinds) == set(sft_synthetic.QUESTION_TYPES) == set(ANSWERS_FROM_PIXELS)
