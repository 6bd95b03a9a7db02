"""TensorFlow wrappers that run a vocabulary's Python encode/decode inside tf.data graphs."""

from typing import Callable, Sequence

import numpy as np
import tensorflow as tf


def encode_tf(encode: Callable[[str], Sequence[int]], text: tf.Tensor) -> tf.Tensor:
  """[None] int32 ids of a scalar string tensor, through a Python `encode`."""
  # numpy_function hands a string tensor over as a 0-d array holding bytes (a Python str given
  # eagerly arrives as str).
  def encode_scalar(s):
    value = s.item()
    return np.asarray(encode(value.decode('utf-8') if isinstance(value, bytes) else value),
                      np.int32)
  ids = tf.numpy_function(encode_scalar, [text], tf.int32)
  return tf.ensure_shape(ids, [None])


def decode_tf(decode: Callable[[Sequence[int]], str], ids: tf.Tensor) -> tf.Tensor:
  """Strings of an [..., length] int tensor, one per row, through a Python `decode`."""
  decode_row = lambda row: decode([int(i) for i in row]).encode('utf-8')
  flat = tf.reshape(ids, [-1, tf.shape(ids)[-1]])
  out = tf.map_fn(lambda row: tf.numpy_function(decode_row, [row], tf.string), flat,
                  fn_output_signature=tf.string)
  return tf.reshape(out, tf.shape(ids)[:-1])
