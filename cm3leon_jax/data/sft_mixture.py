"""The fine-tuning mixture: one store task per instruction task, sampled at balanced rates.

CM3Leon balances its SFT tasks by up- and down-sampling with thresholds 3 and 0.3 (arXiv
2309.02591, section 4); the paper gives only those numbers. The rule here (docs/method.md):

  natural share   p_i = n_i / sum_j n_j            (n_i: documents in task i's training split)
  target share    t_i = the rate asked for task i, normalised (default: every task alike)
  factor          f_i = clip(t_i / p_i, 0.3, 3)    (sampled at most 3x, at least 0.3x, as often
                                                    as its size alone would give)
  rate            r_i = p_i f_i / sum_j p_j f_j

With balancing off the rates are the natural shares (examples-proportional mixing).

  # gin: one store per task, the mixture registered by name
  sft_mixture.register_sft_mixture.name = 'sft'
  sft_mixture.register_sft_mixture.stores = {'sft_edit': '/data/sft_edit', ...}
"""

from typing import Dict, Mapping, Optional

import gin
import seqio

from cm3leon_jax.data import assembly
from cm3leon_jax.data import store_tasks

UP_THRESHOLD, DOWN_THRESHOLD = 3.0, 0.3


def balanced_rates(sizes: Mapping[str, int], targets: Optional[Mapping[str, float]] = None,
                   up: float = UP_THRESHOLD, down: float = DOWN_THRESHOLD) -> Dict[str, float]:
  """Each task's sampling rate (summing to 1) by the rule above."""
  if not sizes or any(n <= 0 for n in sizes.values()):
    raise ValueError(f'Every task needs at least one training document; sizes: {dict(sizes)}.')
  if not 0 < down <= 1 <= up:
    raise ValueError(f'Balancing thresholds must satisfy 0 < down <= 1 <= up; got down={down}, '
                     f'up={up}.')
  targets = dict(targets) if targets else {name: 1.0 for name in sizes}
  if set(targets) != set(sizes) or any(t <= 0 for t in targets.values()):
    raise ValueError(f'Target rates must be positive and name exactly the tasks {sorted(sizes)}; '
                     f'got {targets}.')
  total, target_total = sum(sizes.values()), sum(targets.values())
  weights = {}
  for name, size in sizes.items():
    natural, target = size / total, targets[name] / target_total
    weights[name] = natural * min(max(target / natural, down), up)
  weight_total = sum(weights.values())
  return {name: weight / weight_total for name, weight in weights.items()}


def natural_rates(sizes: Mapping[str, int]) -> Dict[str, float]:
  """Each task's share of the documents (balancing off)."""
  total = sum(sizes.values())
  return {name: size / total for name, size in sizes.items()}


@gin.configurable
def register_sft_mixture(name: str, stores: Mapping[str, str],
                         targets: Optional[Mapping[str, float]] = None, balance: bool = True,
                         up: float = UP_THRESHOLD, down: float = DOWN_THRESHOLD,
                         assembly_config: Optional[assembly.AssemblyConfig] = None,
                         split: str = 'train') -> seqio.Mixture:
  """Register a store task per entry of `stores` ({task name: store folder}) and the Mixture
  `name` of them at balanced (or natural) rates; returns the Mixture."""
  sizes = {}
  for task, store_dir in stores.items():
    store_tasks.register_store_task(task, store_dir, assembly_config=assembly_config)
    sizes[task] = store_tasks.task_store_info(task).stores[split].num_documents
  rates = balanced_rates(sizes, targets, up, down) if balance else natural_rates(sizes)
  return store_tasks.register_store_mixture(name, list(rates.items()))
