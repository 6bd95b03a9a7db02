"""The tf.data side of training examples: seqio preprocessors and the feature converter.

Store records -> ``store_tokens`` (int32 token features; the cacheable part) ->
``cm3_examples`` (retrieved + query + CM3, seeded per example) -> ``targets`` and ``loss_weights``
-> ``CM3FeatureConverter`` (seqio's decoder features, packed, with those loss weights).

The assembly runs in numpy through ``tf.numpy_function``; each example gets its own stateless seed
from seqio, so a fixed seed gives the same batches on any machine and in any thread order.
"""

from typing import Mapping

import numpy as np
import seqio
import tensorflow as tf

from cm3leon_jax.data import assembly
from cm3leon_jax.data import store as store_lib

# seqio's packing treats 0 as padding in every feature and drops it, so the task feature holds
# loss weight + 1 and the feature converter subtracts it again.
WEIGHT_OFFSET = 1
TOKEN_FEATURES = ('text_ids', 'image_codes', 'neighbour_text_ids', 'neighbour_text_lengths',
                  'neighbour_image_codes', 'neighbour_image_lengths', 'part_kinds',
                  'part_outputs', 'part_joined', 'part_ids', 'part_lengths')


def store_tokens(dataset: tf.data.Dataset) -> tf.data.Dataset:
  """Keep the store's token features, as int32 (what seqio's cache stores)."""
  return dataset.map(lambda x: {k: tf.cast(x[k], tf.int32) for k in TOKEN_FEATURES},
                     num_parallel_calls=tf.data.AUTOTUNE)


def _ragged(flat, lengths):
  return np.split(flat, np.cumsum(lengths)[:-1]) if len(lengths) else []


def _neighbours(flat_text, text_lengths, flat_image, image_lengths):
  return list(zip(_ragged(flat_text, text_lengths), _ragged(flat_image, image_lengths)))


def _query(text_ids, image_codes, kinds, outputs, joined, flat_ids, lengths):
  """The query as assembly takes it: an instruction document's parts when it has them."""
  if not len(kinds):
    return text_ids, image_codes
  return assembly.PartsTokens(is_image=kinds == store_lib.IMAGE_PART, outputs=outputs > 0,
                              joined=joined > 0, ids=_ragged(flat_ids, lengths))


def _rng(seed: np.ndarray) -> np.random.Generator:
  return np.random.default_rng(np.asarray(seed, np.int64).view(np.uint64))


def make_assembler(layout: assembly.TokenLayout, config: assembly.AssemblyConfig,
                   max_length: int):
  """The numpy function the preprocessor calls: token features + seed -> (targets, weights)."""

  def assemble(text_ids, image_codes, n_text, n_text_lengths, n_image, n_image_lengths,
               kinds, outputs, joined, part_ids, part_lengths, seed):
    retrieved = _neighbours(n_text, n_text_lengths, n_image, n_image_lengths)
    query = _query(text_ids, image_codes, kinds, outputs, joined, part_ids, part_lengths)
    example = assembly.assemble(query, retrieved, max_length, _rng(seed), layout, config)
    if example is None:  # Filtered out below: the query's image alone does not fit.
      return np.zeros(0, np.int32), np.zeros(0, np.int32)
    tokens, weights = example
    return tokens, weights + WEIGHT_OFFSET

  return assemble


def cm3_examples(dataset: tf.data.Dataset, sequence_length: Mapping[str, int],
                 layout: assembly.TokenLayout,
                 config: assembly.AssemblyConfig) -> tf.data.Dataset:
  """seqio preprocessor: store tokens -> {'targets', 'loss_weights' + WEIGHT_OFFSET}.

  Both features have at most the targets length; examples that cannot fit are dropped.
  """
  assemble = make_assembler(layout, config, sequence_length['targets'])

  @seqio.map_over_dataset(num_seeds=1)
  def build(features, seed):
    inputs = [features[k] for k in TOKEN_FEATURES] + [seed]
    targets, weights = tf.numpy_function(assemble, inputs, [tf.int32, tf.int32], stateful=False)
    return {'targets': tf.ensure_shape(targets, [None]),
            'loss_weights': tf.ensure_shape(weights, [None])}

  return build(dataset).filter(lambda x: tf.size(x['targets']) > 0)


class CM3FeatureConverter(seqio.LMFeatureConverter):
  """seqio's decoder-only features (packed or padded), with the task's own loss weights.

  Same output as ``seqio.DecoderFeatureConverter`` for a ``targets``-only task:
  decoder_target_tokens, decoder_input_tokens, decoder_loss_weights and, when packing,
  decoder_segment_ids and decoder_positions. ``decoder_loss_weights`` is the task's
  ``loss_weights`` less WEIGHT_OFFSET (0 on CM3's in-place sentinels) and 0 on padding. Pass task feature lengths
  for ``targets`` only; ``loss_weights`` always has the same length.
  """

  TASK_FEATURES = {
      'targets': seqio.FeatureConverter.FeatureSpec(dtype=tf.int32),
      'loss_weights': seqio.FeatureConverter.FeatureSpec(dtype=tf.int32),
  }

  def __call__(self, ds: tf.data.Dataset, task_feature_lengths: Mapping[str, int]):
    lengths = dict(task_feature_lengths)
    lengths['loss_weights'] = lengths['targets']
    return super().__call__(ds, lengths)

  def _convert_example(self, features):
    converted = dict(super()._convert_example(features))
    weights = tf.maximum(features['loss_weights'] - WEIGHT_OFFSET, 0)
    converted['decoder_loss_weights'] = weights * converted['decoder_loss_weights']
    return converted

  def get_model_feature_lengths(self, task_feature_lengths: Mapping[str, int]):
    lengths = {k: v for k, v in task_feature_lengths.items() if k != 'loss_weights'}
    return super().get_model_feature_lengths(lengths)
