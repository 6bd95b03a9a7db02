"""How one HF tensor becomes one of our parameters and back.

Each transform knows three things, so that loading, saving and shape checks share one definition:
the HF shape implied by our shape, HF -> ours, and ours -> HF. Arrays are numpy (host) arrays.
"""

import dataclasses
import math
from typing import Tuple

import numpy as np

Shape = Tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Identity:
  """Same layout on both sides (embedding tables, norm scales and biases)."""

  def hf_shape(self, ours: Shape) -> Shape:
    return tuple(ours)

  def to_ours(self, x: np.ndarray, ours: Shape) -> np.ndarray:
    return x

  def to_hf(self, x: np.ndarray) -> np.ndarray:
    return x


@dataclasses.dataclass(frozen=True)
class Linear:
  """A torch nn.Linear weight (out, in) <-> our kernel (*in_axes, *out_axes).

  `in_dims` is how many leading axes of our kernel are contracted with the input: 1 for most
  kernels, 2 for the attention output kernel (heads, head_dim, d).
  """

  in_dims: int = 1

  def hf_shape(self, ours: Shape) -> Shape:
    return (math.prod(ours[self.in_dims:]), math.prod(ours[:self.in_dims]))

  def to_ours(self, x: np.ndarray, ours: Shape) -> np.ndarray:
    return x.T.reshape(ours)

  def to_hf(self, x: np.ndarray) -> np.ndarray:
    shape = x.shape
    return x.reshape(math.prod(shape[:self.in_dims]), math.prod(shape[self.in_dims:])).T


@dataclasses.dataclass(frozen=True)
class SkipRows:
  """An HF table with `rows` extra leading rows that we do not use (OPT's position offset of 2).

  Saving writes zeros there: OPT never reads row 0 and reads row 1 only for left padding.
  """

  rows: int

  def hf_shape(self, ours: Shape) -> Shape:
    return (ours[0] + self.rows,) + tuple(ours[1:])

  def to_ours(self, x: np.ndarray, ours: Shape) -> np.ndarray:
    return x[self.rows:]

  def to_hf(self, x: np.ndarray) -> np.ndarray:
    return np.concatenate([np.zeros((self.rows,) + x.shape[1:], x.dtype), x])
