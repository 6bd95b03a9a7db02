"""The building blocks of the taming-transformers VQ-GAN, in Flax linen, channels last (NHWC).

Every submodule carries the name of its taming counterpart, with '_i' where taming has a list
index ('down.0.block.1' -> 'down_0/block_1'); ``interop/taming_vqgan.py`` relies on it to translate
weight names with one rule.
"""

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from cm3leon_jax.models.vqgan_config import NORM_GROUPS


def group_norm(name: str) -> nn.GroupNorm:
  """taming's Normalize(): GroupNorm(32 groups, eps 1e-6) with an affine transform."""
  # The two-pass variance matches torch's GroupNorm more closely than E[x^2] - E[x]^2.
  return nn.GroupNorm(num_groups=NORM_GROUPS, epsilon=1e-6, use_fast_variance=False, name=name)


def conv(features: int, kernel: int, name: Optional[str] = None, stride: int = 1,
         padding='SAME') -> nn.Conv:
  """A biased 2-D convolution; 'SAME' with stride 1 is torch's padding=(kernel - 1) // 2."""
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=padding, name=name)


class ResnetBlock(nn.Module):
  """norm-swish-conv twice plus a shortcut (a 1x1 'nin_shortcut' when the width changes)."""

  features: int
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
    h = conv(self.features, 3, 'conv1')(nn.swish(group_norm('norm1')(x)))
    h = nn.swish(group_norm('norm2')(h))
    h = nn.Dropout(self.dropout, deterministic=deterministic)(h)
    h = conv(self.features, 3, 'conv2')(h)
    if x.shape[-1] != self.features:
      x = conv(self.features, 1, 'nin_shortcut')(x)
    return x + h


class AttnBlock(nn.Module):
  """Single-head self-attention over all positions of the feature map, with a residual."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, height, width, c = x.shape
    h = group_norm('norm')(x)
    q, k, v = (conv(c, 1, name)(h).reshape(b, height * width, c) for name in ('q', 'k', 'v'))
    weights = jax.nn.softmax(jnp.einsum('bic,bjc->bij', q, k) * c ** -0.5, axis=-1)
    h = jnp.einsum('bij,bjc->bic', weights, v).reshape(b, height, width, c)
    return x + conv(c, 1, 'proj_out')(h)


class Downsample(nn.Module):
  """Stride-2 3x3 conv after padding one zero row/column at the bottom/right only (taming's)."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    # torch convs only pad symmetrically, so taming pads (0, 1, 0, 1) by hand; same here.
    x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
    return conv(x.shape[-1], 3, 'conv', stride=2, padding='VALID')(x)


class Upsample(nn.Module):
  """Nearest-neighbour x2 then a 3x3 conv."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    return conv(x.shape[-1], 3, 'conv')(x)


class Level(nn.Module):
  """One resolution level: ResnetBlocks 'block_j' (each optionally followed by 'attn_j'), then
  an optional 'downsample' or 'upsample'."""

  features: int
  num_blocks: int
  attention: bool
  resample: Optional[str] = None  # None, 'down' or 'up'.
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
    for j in range(self.num_blocks):
      x = ResnetBlock(self.features, self.dropout, name=f'block_{j}')(x, deterministic)
      if self.attention:
        x = AttnBlock(name=f'attn_{j}')(x)
    if self.resample == 'down':
      x = Downsample(name='downsample')(x)
    elif self.resample == 'up':
      x = Upsample(name='upsample')(x)
    return x


class Mid(nn.Module):
  """The middle block at the coarsest level: ResnetBlock, AttnBlock, ResnetBlock."""

  dropout: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
    features = x.shape[-1]
    x = ResnetBlock(features, self.dropout, name='block_1')(x, deterministic)
    x = AttnBlock(name='attn_1')(x)
    return ResnetBlock(features, self.dropout, name='block_2')(x, deterministic)
