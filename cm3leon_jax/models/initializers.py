"""Initialisers of CM3Leon (arXiv 2309.02591) section 2.3, wrapped with logical axis names."""

from typing import Sequence

import flax.linen as nn
import jax


def truncated_normal(std: float):
  """Truncated normal, mean 0, cut at 3 std; `std` is that of the untruncated normal (as torch's)."""
  return jax.nn.initializers.truncated_normal(stddev=std, lower=-3.0, upper=3.0)


def with_axes(init, axes: Sequence[str]):
  """Attach logical axis names to an initialiser's output (nn.Partitioned)."""
  return nn.with_logical_partitioning(init, tuple(axes))


def weight_init(config, axes, zero: bool = False):
  """The initialiser of a weight matrix: truncated normal, or zeros for residual projections."""
  init = jax.nn.initializers.zeros if zero else truncated_normal(config.init_std)
  return with_axes(init, axes)
