"""The one dataclass that configures the decoder, with its validation.

Two families share one module tree (see ``decoder.py``):

* ``cm3leon``: the OPT-like block of the CM3Leon paper (pre-LayerNorm without learnable parameters,
  no biases, no dropout, learned absolute positions, MLP of width 4*d).
* ``chameleon``: Chameleon's block (RMSNorm, SwiGLU, RoPE, per-head QK LayerNorm, grouped KV heads,
  optional "swin" norm order), needed to load its public weights.

Invalid values fail here, at build time, with one message naming the field and the fix.
"""

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp

from cm3leon_jax.models import remat

FAMILIES = ('cm3leon', 'chameleon')
# The 'cm3leon' MLP's activations by DecoderConfig.activation name; layers.Mlp applies them.
# 'gelu' is the tanh approximation (transformers' 'gelu_new'), 'gelu_exact' the erf form.
ACTIVATIONS = {
    'relu': jax.nn.relu,
    'gelu': lambda x: jax.nn.gelu(x, approximate=True),
    'gelu_exact': lambda x: jax.nn.gelu(x, approximate=False),
    'silu': jax.nn.silu,
}
DTYPES = ('float32', 'bfloat16', 'float16')
ATTENTION_IMPLS = (None, 'xla', 'cudnn', 'blocked')


class ConfigError(ValueError):
  """A decoder configuration that cannot be built."""


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
  """Shapes and numerics of a decoder-only transformer.

  Attributes:
    family: 'cm3leon' or 'chameleon' (see module docstring).
    vocab_size: rows of the token embedding and columns of the LM head.
    num_layers: transformer blocks.
    embed_dim: model width d.
    num_heads: query heads; must divide embed_dim unless head_dim is given.
    num_kv_heads: key/value heads (grouped-query attention); None means num_heads.
    head_dim: per-head width; None means embed_dim // num_heads.
    mlp_dim: hidden width of the MLP; None means 4 * embed_dim (the paper's FFN 4*d).
    max_length: longest sequence (rows of the position table for 'cm3leon').
    activation: MLP activation for 'cm3leon' (OPT uses ReLU; the paper does not say).
    rope_theta: RoPE base for 'chameleon'.
    norm_eps: epsilon of the block norms (LayerNorm or RMSNorm).
    qk_norm: per-head LayerNorm on queries and keys ('chameleon' uses it).
    swin_norm: Chameleon-34B's norm order: h = x + norm(attn(x)); out = h + norm(mlp(h)).
    init_std: std of the truncated normal (cut at 3 std) for every weight matrix.
    position_init_std: std of the learned position table.
    zero_init_residual: attention output and MLP output projections start at 0 (CM3Leon, arXiv
      2309.02591, section 2.3).
    param_dtype: storage dtype of the parameters (fp32 master weights by default).
    dtype: compute dtype of activations and matmuls.
    scan_layers: stack the blocks with nn.scan (one compiled block; parameters gain a 'layers' axis).
    remat_policy: name from ``remat.POLICIES`` (MaxText's names); 'none' keeps every activation,
      'full' recomputes the whole block.
    attention_impl: None or 'xla' (jax.nn.dot_product_attention's XLA path), 'cudnn' (its cuDNN
      flash attention, for GPUs) or 'blocked' (``blocked_attention``: skips the masked triangle;
      the fastest on CPUs). Decoding with the KV cache always uses jax.nn.dot_product_attention.
    attention_block: queries per block of the 'blocked' implementation.
  """

  family: str = 'cm3leon'
  vocab_size: int = 64512
  num_layers: int = 24
  embed_dim: int = 1024
  num_heads: int = 16
  num_kv_heads: Optional[int] = None
  head_dim: Optional[int] = None
  mlp_dim: Optional[int] = None
  max_length: int = 4096
  activation: str = 'relu'
  rope_theta: float = 10000.0
  norm_eps: float = 1e-5
  qk_norm: bool = False
  swin_norm: bool = False
  init_std: float = 0.006
  position_init_std: float = 0.0002
  zero_init_residual: bool = True
  param_dtype: str = 'float32'
  dtype: str = 'bfloat16'
  scan_layers: bool = True
  remat_policy: str = 'none'
  attention_impl: Optional[str] = None
  attention_block: int = 128

  def __post_init__(self):
    _check_choice('family', self.family, FAMILIES)
    _check_choice('activation', self.activation, ACTIVATIONS)
    _check_choice('param_dtype', self.param_dtype, DTYPES)
    _check_choice('dtype', self.dtype, DTYPES)
    _check_choice('attention_impl', self.attention_impl, ATTENTION_IMPLS)
    for name in ('vocab_size', 'num_layers', 'embed_dim', 'num_heads', 'max_length',
                 'attention_block'):
      _check_positive(name, getattr(self, name))
    for name in ('num_kv_heads', 'head_dim', 'mlp_dim'):
      if getattr(self, name) is not None:
        _check_positive(name, getattr(self, name))
    for name in ('init_std', 'position_init_std', 'norm_eps', 'rope_theta'):
      if not getattr(self, name) > 0:
        raise ConfigError(f'DecoderConfig.{name} must be > 0, got {getattr(self, name)!r}.')
    if self.head_dim is None and self.embed_dim % self.num_heads:
      raise ConfigError(
          f'DecoderConfig.num_heads={self.num_heads} does not divide embed_dim={self.embed_dim}; '
          'choose heads that divide the width or set head_dim explicitly.')
    if self.num_heads % self.kv_heads:
      raise ConfigError(
          f'DecoderConfig.num_kv_heads={self.kv_heads} must divide num_heads={self.num_heads} '
          '(each KV head serves a whole group of query heads).')
    if self.family == 'chameleon' and self.per_head_dim % 2:
      raise ConfigError(f'RoPE needs an even head_dim, got {self.per_head_dim}.')
    if not remat.is_known(self.remat_policy):
      raise ConfigError(f'DecoderConfig.{remat.unknown_policy_message(self.remat_policy)}')

  @property
  def kv_heads(self) -> int:
    """Number of key/value heads."""
    return self.num_kv_heads or self.num_heads

  @property
  def per_head_dim(self) -> int:
    """Width of one attention head."""
    return self.head_dim or self.embed_dim // self.num_heads

  @property
  def hidden_dim(self) -> int:
    """Width of the MLP's hidden layer."""
    return self.mlp_dim or 4 * self.embed_dim

  @property
  def jnp_dtype(self):
    """Compute dtype as a jnp dtype."""
    return jnp.dtype(self.dtype)

  @property
  def jnp_param_dtype(self):
    """Parameter dtype as a jnp dtype."""
    return jnp.dtype(self.param_dtype)

  def replace(self, **changes) -> 'DecoderConfig':
    """A copy with some fields changed (validated again)."""
    return dataclasses.replace(self, **changes)


def _check_choice(name, value, choices):
  if value not in choices:
    raise ConfigError(f'DecoderConfig.{name}={value!r} is unknown; choose one of {list(choices)}.')


def _check_positive(name, value):
  if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
    raise ConfigError(f'DecoderConfig.{name} must be a positive integer, got {value!r}.')
