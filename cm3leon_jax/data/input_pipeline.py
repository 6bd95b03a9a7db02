"""The trainer's input: per-host seqio batches, and their assembly into global device arrays.

Every process reads its own shards of the mixture (``seqio.ShardInfo``) and batches its rows of the
global batch; ``to_global`` stitches the hosts' rows into arrays sharded over the mesh's data axes. Nothing is prefetched in Python, so the tf.data
iterator's checkpoint is exactly the position of the next batch.
"""

from typing import Dict, Mapping, Optional

import jax
import numpy as np
import seqio
import tensorflow as tf

from cm3leon_jax.data import store_tasks
from cm3leon_jax.data.seqio_ops import CM3FeatureConverter


def _shards_of_this_process(num_shards: int):
  count, index = jax.process_count(), jax.process_index()
  if num_shards % count:
    raise ValueError(f'data_shards={num_shards} must be a multiple of the {count} processes.')
  per_process = num_shards // count
  return range(index * per_process, (index + 1) * per_process)


def make_dataset(mixture_or_task_name: str, task_feature_lengths: Mapping[str, int],
                 global_batch_size: int, split: str = 'train', seed: Optional[int] = 0,
                 shuffle: bool = True, num_epochs: Optional[int] = None,
                 use_cached: bool = False, pack: bool = True,
                 num_shards: Optional[int] = None) -> tf.data.Dataset:
  """This host's batches of packed decoder features (numpy-ready, int32).

  The data is read as `num_shards` seqio shards (default: one per process), each giving
  global_batch_size / num_shards rows of every batch (shard i with seed + i); a process reads its
  own shards and concatenates their rows. The batches therefore depend on num_shards, not on how
  many processes share the work: a 1-process run with num_shards=2 sees the same global batches
  as a 2-process run.
  """
  check_registered(mixture_or_task_name)
  num_shards = num_shards or jax.process_count()
  if global_batch_size % num_shards:
    raise ValueError(f'Batch size {global_batch_size} is not divisible by {num_shards} data '
                     'shards.')
  datasets = []
  for shard in _shards_of_this_process(num_shards):
    dataset = seqio.get_dataset(
        mixture_or_task_name, task_feature_lengths, CM3FeatureConverter(pack=pack),
        dataset_split=split, use_cached=use_cached, shuffle=shuffle, num_epochs=num_epochs,
        shard_info=seqio.ShardInfo(index=shard, num_shards=num_shards),
        seed=None if seed is None else seed + shard, verbose=False)
    datasets.append(dataset.batch(global_batch_size // num_shards, drop_remainder=True))
  if len(datasets) == 1:
    return datasets[0]
  concat = lambda *batches: {k: tf.concat([b[k] for b in batches], 0) for k in batches[0]}
  return tf.data.Dataset.zip(tuple(datasets)).map(concat)


def to_global(host_batch: Mapping[str, np.ndarray], sharding) -> Dict[str, jax.Array]:
  """One global array per feature from every process's local rows."""
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in host_batch.items()}


def check_registered(mixture_or_task_name: str) -> None:
  """Raise ValueError naming the registered tasks unless `mixture_or_task_name` is one."""
  known = set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names())
  if mixture_or_task_name not in known:
    raise ValueError(
        f'Unknown seqio task or mixture {mixture_or_task_name!r}. Registered: '
        f'{sorted(n for n in known if n.startswith("cm3leon")) or "none of this project"}. The '
        f'standard tasks register once their store exists under $CM3LEON_DATA_DIR '
        f'({store_tasks.DATA_DIR}); other stores with tasks.register_store_task.')


def vocabulary(mixture_or_task_name: str):
  """The multimodal vocabulary of a registered task or mixture's targets."""
  check_registered(mixture_or_task_name)
  return seqio.get_mixture_or_task(mixture_or_task_name).output_features['targets'].vocabulary
