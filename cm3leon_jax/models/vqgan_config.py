"""The dataclass that configures the VQ-GAN image tokenizer, with its validation.

Field names follow taming-transformers' ``ddconfig`` (plus the quantizer's ``embed_dim``,
``n_embed`` and ``beta``), so a taming YAML config reads across one field at a time. Invalid values
fail here, at build time, with one message naming the field and the fix.
"""

import dataclasses
from typing import Tuple

from cm3leon_jax.models.config import ConfigError

# taming's Normalize() is GroupNorm with 32 groups: every normalised width must be a multiple.
NORM_GROUPS = 32


@dataclasses.dataclass(frozen=True)
class VQGANConfig:
  """Shapes of a taming-layout VQ-GAN (Encoder, VectorQuantizer2, Decoder).

  Attributes:
    resolution: side of the square input images, in pixels.
    in_channels: image channels (the decoder outputs as many).
    ch: base width; level i has width ch * ch_mult[i].
    ch_mult: width multiplier of each level; len(ch_mult) - 1 stride-2 downsamplings.
    num_res_blocks: ResnetBlocks per encoder level (the decoder has one more per level).
    attn_resolutions: feature-map sides at which level blocks are followed by an AttnBlock (the
      middle block always has one, as in taming).
    z_channels: encoder output width (decoder input width).
    embed_dim: width of a codebook vector (quant_conv maps z_channels to it).
    n_embed: codebook entries (the number of image tokens).
    beta: weight of taming's legacy-form codebook term (see ``VectorQuantizer``).
    double_z: kept for taming's ddconfig; must be False (a VQ-GAN has no variance half).
    dropout: dropout rate inside the ResnetBlocks (0 in every released tokenizer).
  """

  resolution: int = 256
  in_channels: int = 3
  ch: int = 128
  ch_mult: Tuple[int, ...] = (1, 1, 2, 4)
  num_res_blocks: int = 2
  attn_resolutions: Tuple[int, ...] = ()
  z_channels: int = 256
  embed_dim: int = 256
  n_embed: int = 8192
  beta: float = 0.25
  double_z: bool = False
  dropout: float = 0.0

  def __post_init__(self):
    # Gin and YAML give lists; tuples keep the frozen dataclass hashable.
    object.__setattr__(self, 'ch_mult', _int_tuple('ch_mult', self.ch_mult))
    object.__setattr__(self, 'attn_resolutions',
                       _int_tuple('attn_resolutions', self.attn_resolutions))
    for name in ('resolution', 'in_channels', 'ch', 'num_res_blocks', 'z_channels', 'embed_dim',
                 'n_embed'):
      _check_positive(name, getattr(self, name))
    if not self.ch_mult:
      raise ConfigError('VQGANConfig.ch_mult must name at least one level, got ().')
    self._check_widths()
    self._check_resolutions()
    if not (isinstance(self.beta, (int, float)) and self.beta >= 0):
      raise ConfigError(f'VQGANConfig.beta must be a number >= 0, got {self.beta!r}.')
    if not (isinstance(self.dropout, (int, float)) and 0 <= self.dropout < 1):
      raise ConfigError(f'VQGANConfig.dropout must be in [0, 1), got {self.dropout!r}.')
    if self.double_z is not False:
      raise ConfigError(f'VQGANConfig.double_z must be False for a VQ-GAN (the quantizer takes '
                        f'z_channels inputs), got {self.double_z!r}.')

  def _check_widths(self):
    for m in self.ch_mult:
      if m <= 0 or (self.ch * m) % NORM_GROUPS:
        raise ConfigError(
            f'VQGANConfig.ch_mult={list(self.ch_mult)} with ch={self.ch} gives width '
            f'{self.ch * m}; every level width must be a positive multiple of {NORM_GROUPS} '
            '(GroupNorm groups).')

  def _check_resolutions(self):
    if self.resolution % self.downsample_factor:
      raise ConfigError(
          f'VQGANConfig.resolution={self.resolution} is not divisible by the downsampling factor '
          f'{self.downsample_factor} that ch_mult={list(self.ch_mult)} implies.')
    reached = self.level_resolutions
    for r in self.attn_resolutions:
      if r not in reached:
        raise ConfigError(
            f'VQGANConfig.attn_resolutions contains {r}, which no level reaches; the levels work '
            f'at {list(reached)}.')

  @property
  def num_levels(self) -> int:
    """Number of resolution levels (len(ch_mult))."""
    return len(self.ch_mult)

  @property
  def downsample_factor(self) -> int:
    """Image side divided by code-grid side."""
    return 2 ** (self.num_levels - 1)

  @property
  def level_resolutions(self) -> Tuple[int, ...]:
    """Feature-map side of each encoder level, finest first."""
    return tuple(self.resolution // 2 ** i for i in range(self.num_levels))

  @property
  def latent_size(self) -> int:
    """Side of the code grid for a `resolution`-sized image."""
    return self.resolution // self.downsample_factor

  @property
  def tokens_per_image(self) -> int:
    """Image tokens per `resolution`-sized image."""
    return self.latent_size ** 2

  def replace(self, **changes) -> 'VQGANConfig':
    """A copy with some fields changed (validated again)."""
    return dataclasses.replace(self, **changes)


def _int_tuple(name, value) -> Tuple[int, ...]:
  try:
    items = tuple(value)
  except TypeError:
    raise ConfigError(
        f'VQGANConfig.{name} must be a sequence of integers, got {value!r}.') from None
  if not all(isinstance(v, int) and not isinstance(v, bool) for v in items):
    raise ConfigError(f'VQGANConfig.{name} must contain integers only, got {value!r}.')
  return items


def _check_positive(name, value):
  if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
    raise ConfigError(f'VQGANConfig.{name} must be a positive integer, got {value!r}.')
