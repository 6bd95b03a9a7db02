"""Instruction examples over the synthetic scenes: each edit, control map, box and answer is true
of the images, as the rule-based judge reads them from the pixels."""

import collections
import re

import numpy as np
import pytest

from cm3leon_jax.data import sft_synthetic, synthetic
from cm3leon_jax.data.synthetic import SyntheticDataset
from cm3leon_jax.evaluation.synthetic_judge import agrees_with_truth, read_objects

SCENES = 150


@pytest.fixture(scope='module')
def dataset():
  return SyntheticDataset()


@pytest.fixture(scope='module')
def edits(dataset):
  return [e for e in (sft_synthetic.edit_example(dataset, i) for i in range(SCENES)) if e]


def _key(obj):
  return obj.shape, obj.colour, obj.size, obj.box


def test_every_kind_of_edit_is_drawn_and_both_images_are_what_the_judge_reads(edits):
  assert len(edits) >= SCENES * 0.97
  assert set(collections.Counter(e.kind for e in edits)) == set(sft_synthetic.EDIT_KINDS)
  for edit in edits:
    assert agrees_with_truth(edit.before.image, edit.before.objects)
    assert agrees_with_truth(edit.after.image, edit.after.objects)


def test_each_edit_changes_what_its_instruction_says_and_keeps_the_rest(edits, dataset):
  step = dataset.config.resolution // 4
  for edit in edits:
    before = collections.Counter(_key(o) for o in edit.before.objects)
    after = collections.Counter(_key(o) for o in edit.after.objects)
    gone, new = list((before - after).elements()), list((after - before).elements())
    words = edit.instruction.split()
    if edit.kind == 'add':
      assert not gone and len(new) == 1 and edit.instruction.startswith(f'add {edit.target} at')
      assert edit.changed.phrase == edit.target
      continue
    shape, colour, size, _ = gone[0]
    assert len(gone) == 1 and edit.target in (f'the {colour} {shape}', f'the {size} {colour} {shape}')
    if edit.kind == 'remove':
      assert not new and edit.changed is None
      continue
    (old,), (changed,) = gone, new
    assert _key(edit.changed) == changed
    if edit.kind == 'recolour':
      assert changed[1] == words[-1] != old[1] and changed[::2] == old[::2]
    elif edit.kind == 'resize':
      assert changed[2] == words[-1] != old[2] and changed[:2] == old[:2]
    else:  # move: the same shape, shifted one step in the direction named.
      dx, dy = {'left': (-1, 0), 'right': (1, 0), 'up': (0, -1), 'down': (0, 1)}[words[-1]]
      shift = np.subtract(changed[3], old[3])
      np.testing.assert_array_equal(shift, [dx * step, dy * step] * 2)


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


def test_every_answer_is_true_of_the_pixels(dataset):
  kinds = collections.Counter()
  for index in range(300):
    text, answer, kind = sft_synthetic.question(dataset, index)
    kinds[kind] += 1
    seen = read_objects(dataset[index].image)
    named = re.search(r'the (\w+)(?: (\w+))?(?: object)?\?$', text)
    if kind == 'count':
      assert answer == str(len(seen))
    elif kind == 'exists':
      colour, shape = re.match(r'is there a (\w+) (\w+)\?', text).groups()
      assert answer == ('yes' if any((o.colour, o.shape) == (colour, shape) for o in seen)
                        else 'no')
    elif kind == 'colour':
      (match,) = [o for o in seen if o.shape == named.group(1)]
      assert answer == match.colour
    elif kind == 'shape':
      (match,) = [o for o in seen if o.colour == named.group(1)]
      assert answer == match.shape
    elif kind == 'size':
      (match,) = [o for o in seen if (o.colour, o.shape) == named.groups()]
      assert answer == match.size
    else:
      assert kind == 'where' and len(seen) == 1
      assert answer == synthetic.region(seen[0], dataset.config.resolution)
  assert set(kinds) == set(sft_synthetic.QUESTION_TYPES)
