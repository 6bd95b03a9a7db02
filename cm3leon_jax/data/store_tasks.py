"""Registering seqio Tasks and Mixtures over document stores written by tools/preprocess.py.

  register_store_task('my_data', '/data/my_store')   # every split folder with a manifest.json
  seqio.get_mixture_or_task('my_data').get_dataset({'targets': 4096}, split='train')

Both functions are gin-configurable, so a run's gin file can register its own data by path.
Tasks read integer tokens only; ``store_tokens`` is cached by seqio's Beam cache
(``python -m seqio.scripts.cache_tasks_main --module_import=tasks ...``, then
USE_CACHED_TASKS=True); the assembly and the CM3 rearrangement run after the cache, so each epoch
draws new masks.
"""

import functools
import os
from typing import Callable, Dict, NamedTuple, Optional, Sequence, Tuple, Union

import gin
import seqio
import tensorflow as tf

from cm3leon_jax.data import assembly, seqio_ops
from cm3leon_jax.data import store as store_lib

# Where the standard tasks' stores live (see the `tasks` package).
DATA_DIR = os.path.expanduser(os.environ.get('CM3LEON_DATA_DIR', '~/.cache/cm3leon_jax/data'))

class TaskStoreInfo(NamedTuple):
  """What a registered store task reads; samplers need the image tokenizer its stores name and the
  CM3 settings the model was trained with.

  Attributes:
    stores: {split: DocumentStore}, the task's document stores by split.
    assembly: how the task assembles its examples (its ``cm3`` field is the CM3 objective's).
  """

  stores: Dict[str, store_lib.DocumentStore]
  assembly: assembly.AssemblyConfig

  @property
  def image_tokenizer(self) -> str:
    """The image tokenizer folder the stores were written with (the first split's manifest)."""
    return next(iter(self.stores.values())).manifest['image_tokenizer']['path']


# Each registered store task's TaskStoreInfo, by task name.
_TASK_STORES: Dict[str, TaskStoreInfo] = {}


def task_store_info(name: str) -> Optional[TaskStoreInfo]:
  """The TaskStoreInfo of a registered store task, or of a mixture's first store task; None for
  tasks that do not read a document store."""
  if name in _TASK_STORES:
    return _TASK_STORES[name]
  if name in seqio.MixtureRegistry.names():
    for task in seqio.get_mixture_or_task(name).tasks:
      if task.name in _TASK_STORES:
        return _TASK_STORES[task.name]
  return None


def _split_stores(store_dir: str, splits: Optional[Sequence[str]]):
  """{split: DocumentStore} for the requested splits (default: every folder with a manifest)."""
  if splits is None:
    if not tf.io.gfile.isdir(store_dir):
      raise store_lib.StoreError(f'Store {store_dir} does not exist; write it with '
                                 'tools/preprocess.py.')
    splits = sorted(s for s in tf.io.gfile.listdir(store_dir) if tf.io.gfile.exists(
        os.path.join(store_dir, s.rstrip('/'), store_lib.MANIFEST)))
    splits = [s.rstrip('/') for s in splits]
  if not splits:
    raise store_lib.StoreError(f'Store {store_dir} has no split folder with a {store_lib.MANIFEST}.')
  return {split: store_lib.DocumentStore(os.path.join(store_dir, split)) for split in splits}


def _one_vocabulary(stores) -> store_lib.MultimodalVocabulary:
  """The vocabulary all splits share; splits tokenized differently cannot train together."""
  specs = {split: s.manifest['vocabulary'] for split, s in stores.items()}
  first = next(iter(stores))
  for split, spec in specs.items():
    if spec['num_image_codes'] != specs[first]['num_image_codes'] or \
        spec['num_sentinels'] != specs[first]['num_sentinels']:
      raise store_lib.StoreError(f'Splits {first!r} and {split!r} of the store use different '
                                 f'vocabularies: {specs[first]} vs {spec}.')
  return stores[first].vocabulary()


# Examples a store task's shuffle buffer holds unless told otherwise.
SHUFFLE_BUFFER_SIZE = 10_000


@gin.configurable
def register_store_task(name: str, store_dir: str,
                        assembly_config: Optional[assembly.AssemblyConfig] = None,
                        splits: Optional[Sequence[str]] = None,
                        shuffle_buffer_size: int = SHUFFLE_BUFFER_SIZE) -> seqio.Task:
  """Register (or re-register) the Task `name` reading the store at `store_dir`.

  `assembly_config` None builds AssemblyConfig() when called, so gin bindings of
  `assembly.AssemblyConfig` (e.g. in gin/quickstart.gin) reach the standard tasks too.
  """
  assembly_config = assembly_config or assembly.AssemblyConfig()
  stores = _split_stores(store_dir, splits)
  vocabulary = _one_vocabulary(stores)
  source = seqio.TFExampleDataSource(
      {split: s.file_pattern for split, s in stores.items()},
      feature_description=store_lib.feature_description(),
      num_input_examples={split: s.num_documents for split, s in stores.items()})
  layout = assembly.TokenLayout.from_vocabulary(vocabulary)
  preprocessors = [
      seqio_ops.store_tokens,
      seqio.CacheDatasetPlaceholder(),
      functools.partial(seqio_ops.cm3_examples, layout=layout, config=assembly_config),
  ]
  output_features = {
      'targets': seqio.Feature(vocabulary, add_eos=False),
      'loss_weights': seqio.Feature(seqio.PassThroughVocabulary(2), add_eos=False),
  }
  _TASK_STORES[name] = TaskStoreInfo(stores=stores, assembly=assembly_config)
  seqio.TaskRegistry.remove(name)
  return seqio.TaskRegistry.add(name, source=source, preprocessors=preprocessors,
                                output_features=output_features,
                                shuffle_buffer_size=shuffle_buffer_size)


@gin.configurable
def register_store_mixture(name: str,
                           tasks: Sequence[Union[str, Tuple[str, float]]],
                           default_rate: Union[float, Callable] = 1.0) -> seqio.Mixture:
  """Register (or re-register) the Mixture `name` of registered tasks (names or (name, rate))."""
  seqio.MixtureRegistry.remove(name)
  return seqio.MixtureRegistry.add(name, list(tasks), default_rate=default_rate)
