"""seqio Task and Mixture registrations; importing `tasks` registers them.

The standard stores live under ``$CM3LEON_DATA_DIR`` (default ``~/.cache/cm3leon_jax/data``):

  cm3leon_synthetic        <data dir>/synthetic        (tools/preprocess.py --source=synthetic)
  cm3leon_coco_captions    <data dir>/coco_captions    (tools/preprocess.py --source=coco_captions)
  cm3leon_pretrain         the mixture of those present, by size

A standard task is registered only once its store exists (a store fixes the vocabulary, which a
seqio Task needs up front). Any other store: ``tasks.register_store_task(name, path)``, from Python
or gin.
"""

import os

from absl import logging
import seqio

from tasks.stores import register_store_mixture, register_store_task

DATA_DIR = os.path.expanduser(os.environ.get('CM3LEON_DATA_DIR', '~/.cache/cm3leon_jax/data'))
STANDARD_STORES = {'cm3leon_synthetic': 'synthetic', 'cm3leon_coco_captions': 'coco_captions'}


def register_standard_tasks(data_dir: str = DATA_DIR):
  """Register the standard tasks whose stores exist under `data_dir`, and their mixture."""
  registered = []
  for name, folder in STANDARD_STORES.items():
    store_dir = os.path.join(data_dir, folder)
    if os.path.isfile(os.path.join(store_dir, 'train', 'manifest.json')):
      register_store_task(name, store_dir)
      registered.append(name)
    else:
      logging.debug('Not registering %s: no store at %s.', name, store_dir)
  if registered:
    register_store_mixture('cm3leon_pretrain', registered,
                           default_rate=seqio.mixing_rate_num_examples)
  return registered


register_standard_tasks()
