"""InceptionV3 as FID measures with it: the network pytorch-fid builds around the 2015-12-05 TF
weights (Heusel et al. 2017; Seitzer, pytorch-fid), NHWC, returning the 2048-d pool features.

It is torchvision's Inception3 with FID's blocks: the A, C and first E blocks average-pool without
counting the padding, the last E block max-pools, BatchNorm uses eps 1e-3, and there are no
auxiliary logits. Inputs in [0, 1] of any size are resized to 299x299 inside the network exactly
as ``torch.nn.functional.interpolate(mode='bilinear', align_corners=False)`` does (no
antialiasing, which ``jax.image.resize`` would add when shrinking), then scaled to [-1, 1].

Module names follow torchvision's attribute names, so a checkpoint tensor's name is its variable
path with '.' for '/' (``interop.pytorch_fid`` maps them).
"""

from typing import Any, Sequence, Tuple

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

INPUT_SIZE = 299
FEATURE_DIM = 2048
BATCH_NORM_EPS = 1e-3


def _bilinear_taps(in_size: int, out_size: int,
                   dtype=np.float32) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
  """The two source indices and the weight of the second, per output index, as PyTorch's CPU
  kernel computes them in `dtype`: half-pixel centres, sources below 0 clamped to 0, the scale
  in `dtype` and the source position `scale * (i + 0.5) - 0.5` rounded to `dtype` once (a fused
  multiply-add)."""
  dtype = np.dtype(dtype)
  scale = np.float64(dtype.type(in_size) / dtype.type(out_size))
  source = (scale * (np.arange(out_size, dtype=np.float64) + 0.5) - 0.5).astype(dtype)
  source = np.maximum(source, dtype.type(0))
  low = np.minimum(np.floor(source).astype(np.int32), in_size - 1)
  high = np.minimum(low + 1, in_size - 1)
  weight_high = np.clip(source - low.astype(dtype), 0, 1).astype(dtype)
  return low, high, weight_high


def _interpolate_axis(x: jnp.ndarray, axis: int, out_size: int) -> jnp.ndarray:
  low, high, weight_high = _bilinear_taps(x.shape[axis], out_size, x.dtype)
  shape = [1] * x.ndim
  shape[axis] = out_size
  weight_high = jnp.asarray(weight_high).reshape(shape)
  return (jnp.take(x, low, axis=axis) * (1 - weight_high) +
          jnp.take(x, high, axis=axis) * weight_high)


def resize_bilinear(images: jnp.ndarray, size: int) -> jnp.ndarray:
  """``F.interpolate(images, (size, size), mode='bilinear', align_corners=False)`` on NHWC images:
  two taps per axis, widths first as PyTorch does; no antialiasing when shrinking."""
  if images.shape[1:3] == (size, size):
    return images  # PyTorch's interpolation to the same size is the identity too.
  return _interpolate_axis(_interpolate_axis(images, 2, size), 1, size)


class BasicConv2d(nn.Module):
  """Bias-free convolution, BatchNorm (running statistics, eps 1e-3), ReLU."""

  features: int
  kernel: Tuple[int, int]
  strides: Tuple[int, int] = (1, 1)
  padding: Tuple[int, int] = (0, 0)

  @nn.compact
  def __call__(self, x):
    pad = [(p, p) for p in self.padding]
    x = nn.Conv(self.features, self.kernel, self.strides, pad, use_bias=False, name='conv')(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=BATCH_NORM_EPS, name='bn')(x)
    return nn.relu(x)


def _conv(name: str, features: int, kernel, strides=(1, 1), padding=(0, 0)) -> BasicConv2d:
  kernel = (kernel, kernel) if isinstance(kernel, int) else tuple(kernel)
  return BasicConv2d(features, kernel, tuple(strides), tuple(padding), name=name)


def _avg_pool_3x3_without_padding(x):
  # FID's blocks divide by the number of real pixels in each window (count_include_pad=False).
  return nn.avg_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3_stride_2(x):
  return nn.max_pool(x, (3, 3), (2, 2), 'VALID')


def _concat(branches: Sequence[jnp.ndarray]) -> jnp.ndarray:
  return jnp.concatenate(branches, axis=-1)


class InceptionA(nn.Module):
  """Mixed_5b/c/d: 1x1, 5x5, double 3x3 and pooled branches."""

  pool_features: int

  @nn.compact
  def __call__(self, x):
    branch5x5 = _conv('branch5x5_2', 64, 5, padding=(2, 2))(_conv('branch5x5_1', 48, 1)(x))
    dbl = _conv('branch3x3dbl_1', 64, 1)(x)
    dbl = _conv('branch3x3dbl_3', 96, 3, padding=(1, 1))(
        _conv('branch3x3dbl_2', 96, 3, padding=(1, 1))(dbl))
    pool = _conv('branch_pool', self.pool_features, 1)(_avg_pool_3x3_without_padding(x))
    return _concat([_conv('branch1x1', 64, 1)(x), branch5x5, dbl, pool])


class InceptionB(nn.Module):
  """Mixed_6a: the grid reduction 35 -> 17."""

  @nn.compact
  def __call__(self, x):
    branch3x3 = _conv('branch3x3', 384, 3, strides=(2, 2))(x)
    dbl = _conv('branch3x3dbl_2', 96, 3, padding=(1, 1))(_conv('branch3x3dbl_1', 64, 1)(x))
    dbl = _conv('branch3x3dbl_3', 96, 3, strides=(2, 2))(dbl)
    return _concat([branch3x3, dbl, _max_pool_3x3_stride_2(x)])


class InceptionC(nn.Module):
  """Mixed_6b..e: factorised 7x7 branches of width `channels_7x7`."""

  channels_7x7: int

  @nn.compact
  def __call__(self, x):
    c = self.channels_7x7
    row, column = ((1, 7), (0, 3)), ((7, 1), (3, 0))  # (kernel, padding) of the factorised 7x7.
    b7 = _conv('branch7x7_1', c, 1)(x)
    b7 = _conv('branch7x7_2', c, row[0], padding=row[1])(b7)
    b7 = _conv('branch7x7_3', 192, column[0], padding=column[1])(b7)
    dbl = _conv('branch7x7dbl_1', c, 1)(x)
    for i, ((kernel, padding), features) in enumerate(
        zip((column, row, column, row), (c, c, c, 192)), start=2):
      dbl = _conv(f'branch7x7dbl_{i}', features, kernel, padding=padding)(dbl)
    pool = _conv('branch_pool', 192, 1)(_avg_pool_3x3_without_padding(x))
    return _concat([_conv('branch1x1', 192, 1)(x), b7, dbl, pool])


class InceptionD(nn.Module):
  """Mixed_7a: the grid reduction 17 -> 8."""

  @nn.compact
  def __call__(self, x):
    b3 = _conv('branch3x3_2', 320, 3, strides=(2, 2))(_conv('branch3x3_1', 192, 1)(x))
    b7 = _conv('branch7x7x3_1', 192, 1)(x)
    b7 = _conv('branch7x7x3_2', 192, (1, 7), padding=(0, 3))(b7)
    b7 = _conv('branch7x7x3_3', 192, (7, 1), padding=(3, 0))(b7)
    b7 = _conv('branch7x7x3_4', 192, 3, strides=(2, 2))(b7)
    return _concat([b3, b7, _max_pool_3x3_stride_2(x)])


class InceptionE(nn.Module):
  """Mixed_7b/c: expanded filter banks. FID's Mixed_7b average-pools without the padding;
  its Mixed_7c max-pools (the TF graph's quirk that the 2015 weights were trained with)."""

  max_pool: bool

  @nn.compact
  def __call__(self, x):
    def split_3x3(prefix, y):
      return _concat([_conv(f'{prefix}a', 384, (1, 3), padding=(0, 1))(y),
                      _conv(f'{prefix}b', 384, (3, 1), padding=(1, 0))(y)])

    b3 = split_3x3('branch3x3_2', _conv('branch3x3_1', 384, 1)(x))
    dbl = _conv('branch3x3dbl_2', 384, 3, padding=(1, 1))(_conv('branch3x3dbl_1', 448, 1)(x))
    dbl = split_3x3('branch3x3dbl_3', dbl)
    if self.max_pool:
      pooled = nn.max_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)))
    else:
      pooled = _avg_pool_3x3_without_padding(x)
    pool = _conv('branch_pool', 192, 1)(pooled)
    return _concat([_conv('branch1x1', 320, 1)(x), b3, dbl, pool])


class FIDInceptionV3(nn.Module):
  """pytorch-fid's InceptionV3 up to the final average pool (its block 3, 2048 features).

  Call it on float images [batch, height, width, 3] with values in [0, 1]; it returns features
  [batch, 2048] in `dtype`. Variables: 'params' (conv kernels, BatchNorm scale and bias) and
  'batch_stats' (BatchNorm running mean and var). `dtype` float64 (with x64 enabled and float64
  variables) computes as pytorch-fid's module does after `.double()`: the tests use it to compare
  the two networks beyond float32's rounding.
  """

  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images):
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f'FIDInceptionV3 expects images [batch, height, width, 3], got '
                       f'{images.shape}.')
    x = resize_bilinear(images.astype(self.dtype), INPUT_SIZE)
    x = 2 * x - 1
    x = _conv('Conv2d_1a_3x3', 32, 3, strides=(2, 2))(x)
    x = _conv('Conv2d_2a_3x3', 32, 3)(x)
    x = _max_pool_3x3_stride_2(_conv('Conv2d_2b_3x3', 64, 3, padding=(1, 1))(x))
    x = _conv('Conv2d_3b_1x1', 80, 1)(x)
    x = _max_pool_3x3_stride_2(_conv('Conv2d_4a_3x3', 192, 3)(x))
    for name, pool_features in (('Mixed_5b', 32), ('Mixed_5c', 64), ('Mixed_5d', 64)):
      x = InceptionA(pool_features, name=name)(x)
    x = InceptionB(name='Mixed_6a')(x)
    for name, channels in (('Mixed_6b', 128), ('Mixed_6c', 160), ('Mixed_6d', 160),
                           ('Mixed_6e', 192)):
      x = InceptionC(channels, name=name)(x)
    x = InceptionD(name='Mixed_7a')(x)
    x = InceptionE(max_pool=False, name='Mixed_7b')(x)
    x = InceptionE(max_pool=True, name='Mixed_7c')(x)
    return jnp.mean(x, axis=(1, 2))
