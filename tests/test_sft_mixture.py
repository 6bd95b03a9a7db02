"""The fine-tuning mixture samples each task at the rate the balancing rule gives it."""

import collections
import os

import numpy as np
import pytest
import seqio

import data_helpers
from cm3leon_jax.data import assembly, sft_mixture
from cm3leon_jax.data import store as store_lib

SIZES = {'sft_a': 400, 'sft_b': 100, 'sft_c': 10}
MARKERS = {'sft_a': 5, 'sft_b': 6, 'sft_c': 7}  # Each task's documents start with its own id.
# By hand: shares 400/510, 100/510, 10/510; equal targets 1/3 give factors 0.425, 1.7 and 17,
# clipped to 3; weights 1/3, 1/3 and 3 * 10/510, normalised.
BALANCED = {'sft_a': 0.45946, 'sft_b': 0.45946, 'sft_c': 0.08108}
NATURAL = {'sft_a': 400 / 510, 'sft_b': 100 / 510, 'sft_c': 10 / 510}
EXAMPLES = 10_000


@pytest.fixture(scope='module')
def stores(synthetic_data_dir, tmp_path_factory):
  like = os.path.join(synthetic_data_dir, 'synthetic', 'train')
  root = tmp_path_factory.mktemp('mixture')
  rng = np.random.default_rng(0)
  for task, size in SIZES.items():
    documents = [store_lib.Document(
        f'{task}/{i}', i, 0, '', np.zeros(0, np.int32), np.zeros(0, np.int32),
        parts=(store_lib.DocumentPart(store_lib.TEXT_PART, np.array([MARKERS[task], 9], np.int32)),
               store_lib.DocumentPart(store_lib.IMAGE_PART, rng.integers(0, 64, 16), True)))
        for i in range(size)]
    data_helpers.write_split_like(root / task / 'train', documents, like)
  return {task: str(root / task) for task in SIZES}


def test_the_rule_clips_each_tasks_factor_to_0_3_and_3():
  rates = sft_mixture.balanced_rates(SIZES)
  assert rates == pytest.approx(BALANCED, abs=1e-5)
  # Asked rates in between the thresholds are met exactly.
  assert sft_mixture.balanced_rates({'x': 50, 'y': 50}, {'x': 2, 'y': 1}) == pytest.approx(
      {'x': 2 / 3, 'y': 1 / 3})
  with pytest.raises(ValueError, match='at least one training document'):
    sft_mixture.balanced_rates({'x': 0, 'y': 5})
  with pytest.raises(ValueError, match='name exactly the tasks'):
    sft_mixture.balanced_rates({'x': 1, 'y': 5}, {'x': 1})


def _shares(name):
  dataset = seqio.get_mixture_or_task(name).get_dataset(
      {'targets': 64}, split='train', shuffle=False, seed=3, num_epochs=None)
  first = collections.Counter(int(x['targets'][0]) for x in dataset.take(EXAMPLES).as_numpy_iterator())
  return {task: first[marker] / EXAMPLES for task, marker in MARKERS.items()}


@pytest.mark.parametrize('balance, want', [(True, BALANCED), (False, NATURAL)])
def test_sampled_shares_are_within_2_points_of_the_rule(stores, balance, want):
  config = assembly.AssemblyConfig(masking_rate=0.0)
  sft_mixture.register_sft_mixture('test_sft_mixture', stores, balance=balance,
                                   assembly_config=config)
  shares = _shares('test_sft_mixture')
  assert sum(shares.values()) == 1.0
  for task in SIZES:
    assert abs(shares[task] - want[task]) < 0.02, (task, shares, want)


def test_the_standard_sft_mixture_balances_the_instruction_stores_present(stores, tmp_path):
  import tasks  # pylint: disable=g-import-not-at-top
  os.symlink(stores['sft_a'], tmp_path / 'sft_edit')
  os.symlink(stores['sft_c'], tmp_path / 'sft_vqa')
  assert tasks.register_sft_tasks(str(tmp_path)) == ['cm3leon_sft_edit', 'cm3leon_sft_vqa']
  mixture = seqio.get_mixture_or_task('cm3leon_sft')
  rates = {task.name: mixture.get_rate(task) for task in mixture.tasks}
  total = sum(rates.values())
  # 400 and 10 documents, equal targets: factors 0.51 and 20.5, clipped to 3.
  assert {k: v / total for k, v in rates.items()} == pytest.approx(
      {'cm3leon_sft_edit': (400 / 410) * 0.5125 / ((400 / 410) * 0.5125 + 30 / 410),
       'cm3leon_sft_vqa': (30 / 410) / ((400 / 410) * 0.5125 + 30 / 410)}, abs=1e-6)
