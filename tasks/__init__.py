"""seqio Task and Mixture registrations; importing `tasks` registers them.

The standard stores live under ``$CM3LEON_DATA_DIR`` (default ``~/.cache/cm3leon_jax/data``):

  cm3leon_synthetic        <data dir>/synthetic        (tools/preprocess.py --source=synthetic)
  cm3leon_coco_captions    <data dir>/coco_captions    (tools/preprocess.py --source=coco_captions)
  <name>_retrieved         <data dir>/<folder>_retrieved: the same store with retrieved
                           neighbours (tools/build_index.py, then tools/retrieve.py)
  cm3leon_pretrain         the mixture of those present, by size (a store's retrieved version
                           in place of the plain one when both exist)
  cm3leon_sft_<task>       <data dir>/sft_<task>: instruction documents of one task (edit,
                           control_canny, control_segmentation, ..., ground, render, caption, vqa;
                           tools/preprocess.py --source=synthetic_instructions|instruct_pix2pix|
                           control)
  cm3leon_sft              the mixture of the instruction tasks present, balanced (thresholds
                           3 / 0.3; cm3leon_jax/data/sft_mixture.py)

A standard task is registered only once its store exists (a store fixes the vocabulary, which a
seqio Task needs up front). Any other store: ``tasks.register_store_task(name, path)``, from Python
or gin.
"""

import os

from absl import logging
import seqio

from cm3leon_jax.data import sft_mixture, sft_templates
from cm3leon_jax.data.store_tasks import DATA_DIR, register_store_mixture, register_store_task

STANDARD_STORES = {'cm3leon_synthetic': 'synthetic', 'cm3leon_coco_captions': 'coco_captions'}
RETRIEVED = '_retrieved'
SFT_TASKS = ('edit', *(f'control_{kind}' for kind in sft_templates.CONTROL_PHRASES), 'ground',
             'render', 'caption', 'vqa')


def register_standard_tasks(data_dir: str = DATA_DIR):
  """Register the standard tasks whose stores exist under `data_dir`, and their mixture."""
  registered, mixed = [], []
  for name, folder in STANDARD_STORES.items():
    present = [variant for variant in (name, name + RETRIEVED)
               if _register_if_present(variant, os.path.join(data_dir, folder + _suffix(variant)))]
    registered += present
    if present:
      mixed.append(present[-1])
  if mixed:
    register_store_mixture('cm3leon_pretrain', mixed, default_rate=seqio.mixing_rate_num_examples)
  return registered + register_sft_tasks(data_dir)


def register_sft_tasks(data_dir: str = DATA_DIR):
  """Register the instruction tasks whose stores exist under `data_dir`, and their balanced
  mixture `cm3leon_sft`."""
  stores = {f'cm3leon_sft_{task}': os.path.join(data_dir, f'sft_{task}') for task in SFT_TASKS}
  present = {name: path for name, path in stores.items()
             if os.path.isfile(os.path.join(path, 'train', 'manifest.json'))}
  if present:
    sft_mixture.register_sft_mixture('cm3leon_sft', present)
  return list(present)


def _suffix(name: str) -> str:
  return RETRIEVED if name.endswith(RETRIEVED) else ''


def _register_if_present(name: str, store_dir: str) -> bool:
  if os.path.isfile(os.path.join(store_dir, 'train', 'manifest.json')):
    register_store_task(name, store_dir)
    return True
  logging.debug('Not registering %s: no store at %s.', name, store_dir)
  return False


register_standard_tasks()
