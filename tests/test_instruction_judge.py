"""The judges of the instruction tasks pass the ground truth and fail what does not follow the
instruction: the unedited input, another scene's boxes or shapes, a wrong answer."""

import numpy as np
import pytest

from data_helpers import synthetic_edits
from cm3leon_jax.data import sft_synthetic
from cm3leon_jax.data.synthetic import SyntheticDataset
from cm3leon_jax.evaluation import instruction_judge as judge

SCENES = 60


@pytest.fixture(scope='module')
def dataset():
  return SyntheticDataset()


@pytest.fixture(scope='module')
def edits(dataset):
  return synthetic_edits(dataset, SCENES)


def test_the_edited_scene_passes_and_the_unedited_input_does_not(edits):
  kinds = set()
  for edit in edits:
    kinds.add(edit.kind)
    assert judge.edit_judgement(edit.after.image, edit).passes, edit.instruction
    copied = judge.edit_judgement(edit.before.image, edit)
    assert not copied.change_made and copied.rest_kept, edit.instruction
  assert kinds == set(sft_synthetic.EDIT_KINDS)


def test_another_scene_keeps_nothing_of_this_one(edits):
  blank = np.full_like(edits[0].after.image, 245)
  judged = [judge.edit_judgement(blank, e) for e in edits]
  # A blank image removes everything: only a removal's change is made, and nothing is kept.
  assert not any(j.change_made for j, e in zip(judged, edits) if e.kind != 'remove')
  assert not any(j.passes for j in judged)
  shifted = [judge.edit_judgement(edits[(i + 1) % len(edits)].after.image, e)
             for i, e in enumerate(edits)]
  assert np.mean([j.passes for j in shifted]) < 0.1


def test_grounding_passes_its_own_boxes_only(dataset):
  own = [judge.grounding_passes(dataset[i].image, sft_synthetic.grounding_objects(dataset[i]))
         for i in range(SCENES)]
  other = [judge.grounding_passes(dataset[i + 1].image, sft_synthetic.grounding_objects(dataset[i]))
           for i in range(SCENES)]
  assert all(own) and np.mean(other) < 0.05
  assert judge.iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(1 / 3)


def test_control_agreement_is_one_on_the_scene_and_low_on_another(dataset):
  own = [judge.control_agreement(dataset[i].image, dataset[i]) for i in range(SCENES)]
  other = [judge.control_agreement(dataset[i + 1].image, dataset[i]) for i in range(SCENES)]
  assert min(own) == 1.0 and np.mean(np.array(other) > judge.MIN_IOU) < 0.1


def test_vqa_score_is_exact_match_after_the_official_normalisation():
  assert judge.vqa_score('Red.', 'red') == 1.0
  assert judge.vqa_score('two', '2') == 1.0
  assert judge.vqa_score('the top left', 'top left') == 1.0
  assert judge.vqa_score('blue', 'red') == 0.0
