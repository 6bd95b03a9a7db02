"""The small building blocks of the decoder: norms, MLPs, embeddings, rotary positions.

Every parameter carries logical axis names (see ``partitioning.LOGICAL_AXIS_RULES``); every matmul
runs in the config's compute dtype on parameters stored in its param dtype.
"""

from typing import Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from cm3leon_jax.models import initializers
from cm3leon_jax.models.config import ACTIVATIONS, DecoderConfig


def layer_norm(x: jax.Array, eps: float) -> jax.Array:
  """LayerNorm over the last axis without learnable parameters; statistics in float32."""
  x32 = x.astype(jnp.float32)
  mean = x32.mean(-1, keepdims=True)
  var = jnp.square(x32 - mean).mean(-1, keepdims=True)
  return ((x32 - mean) * jax.lax.rsqrt(var + eps)).astype(x.dtype)


class BlockNorm(nn.Module):
  """The family's block norm: parameter-free LayerNorm (cm3leon) or RMSNorm with a scale (chameleon).

  Statistics are computed in float32 whatever the compute dtype.
  """

  config: DecoderConfig

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    if cfg.family != 'chameleon':
      return layer_norm(x, cfg.norm_eps).astype(cfg.jnp_dtype)
    scale = self.param('scale', initializers.with_axes(nn.initializers.ones, ('embed',)),
                       (x.shape[-1],), cfg.jnp_param_dtype)
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), -1, keepdims=True) + cfg.norm_eps)
    return scale.astype(cfg.jnp_dtype) * normed.astype(cfg.jnp_dtype)


class HeadNorm(nn.Module):
  """Per-head LayerNorm of queries or keys (QK-norm): statistics over head_dim, affine per head.

  Chameleon applies each head's own scale and bias after normalising over the head's width only.
  """

  config: DecoderConfig
  heads_axis: str  # 'heads' for queries, 'kv_heads' for keys.
  eps: float = 1e-5  # Chameleon fixes this epsilon, independent of norm_eps.

  @nn.compact
  def __call__(self, x):  # x: [batch, length, heads, head_dim]
    cfg = self.config
    shape = x.shape[-2:]
    axes = (self.heads_axis, 'kv')
    scale = self.param('scale', initializers.with_axes(nn.initializers.ones, axes), shape,
                       cfg.jnp_param_dtype)
    bias = self.param('bias', initializers.with_axes(nn.initializers.zeros, axes), shape,
                      cfg.jnp_param_dtype)
    normed = layer_norm(x, self.eps)
    return normed * scale.astype(x.dtype) + bias.astype(x.dtype)


class Dense(nn.Module):
  """A bias-free projection contracting the input's last `contract` axes with a kernel of shape
  input_dims + features. (nn.DenseGeneral initialises a flattened kernel, which breaks sharded
  initialisation of multi-axis kernels such as [embed, heads, kv].)"""

  config: DecoderConfig
  features: Tuple[int, ...]
  axes: Tuple[str, ...]
  contract: int = 1
  zero_init: bool = False

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    shape = tuple(x.shape[-self.contract:]) + tuple(self.features)
    kernel = self.param('kernel', initializers.weight_init(cfg, self.axes, zero=self.zero_init),
                        shape, cfg.jnp_param_dtype)
    return jnp.tensordot(x.astype(cfg.jnp_dtype), kernel.astype(cfg.jnp_dtype), axes=self.contract)


def dense(config: DecoderConfig, features, axes, name: str, contract: int = 1,
          zero_init: bool = False) -> Dense:
  """A bias-free Dense with logical axes on its kernel; `features` is an int or a tuple."""
  features = (features,) if isinstance(features, int) else tuple(features)
  return Dense(config, features, tuple(axes), contract, zero_init, name=name)


class Mlp(nn.Module):
  """The block's MLP: act(x W_in) W_out for cm3leon, SwiGLU (silu(x W_gate) * x W_up) W_down for chameleon."""

  config: DecoderConfig

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    hidden = cfg.hidden_dim
    if cfg.family == 'chameleon':
      gate = dense(cfg, hidden, ('embed', 'mlp'), 'gate')(x)
      up = dense(cfg, hidden, ('embed', 'mlp'), 'up')(x)
      h = jax.nn.silu(gate) * up
    else:
      h = ACTIVATIONS[cfg.activation](dense(cfg, hidden, ('embed', 'mlp'), 'wi')(x))
    h = nn.with_logical_constraint(h, ('batch', 'length', 'mlp'))
    out = dense(cfg, x.shape[-1], ('mlp', 'embed'), 'wo', zero_init=cfg.zero_init_residual)(h)
    return checkpoint_name(out, 'mlpwo')


def apply_rope(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
  """Rotary embedding in the 'rotate half' layout (transformers' Chameleon/Llama).

  Args:
    x: [batch, length, heads, head_dim].
    positions: [batch, length] integer positions.
    theta: the RoPE base.
  """
  dim = x.shape[-1]
  inv_freq = 1.0 / (theta ** (jnp.arange(0, dim, 2, dtype=jnp.float32) / dim))
  angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [batch, length, dim/2]
  angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]
  cos, sin = jnp.cos(angles).astype(x.dtype), jnp.sin(angles).astype(x.dtype)
  first, second = jnp.split(x, 2, axis=-1)
  rotated = jnp.concatenate([-second, first], axis=-1)
  return x * cos + rotated * sin


class Embed(nn.Module):
  """Token embedding (and, for cm3leon, the learned absolute position table)."""

  config: DecoderConfig

  @nn.compact
  def __call__(self, tokens, positions):
    cfg = self.config
    table = self.param(
        'token', initializers.weight_init(cfg, ('vocab', 'embed')),
        (cfg.vocab_size, cfg.embed_dim), cfg.jnp_param_dtype)
    x = jnp.take(table.astype(cfg.jnp_dtype), tokens, axis=0)
    if cfg.family == 'cm3leon':
      position_table = self.param(
          'position',
          initializers.with_axes(initializers.truncated_normal(cfg.position_init_std),
                                 ('positions', 'embed')),
          (cfg.max_length, cfg.embed_dim), cfg.jnp_param_dtype)
      x = x + jnp.take(position_table.astype(cfg.jnp_dtype), positions, axis=0)
    return nn.with_logical_constraint(x, ('batch', 'length', 'embed'))


class LMHead(nn.Module):
  """The untied output projection; logits come back in float32 for a stable softmax."""

  config: DecoderConfig

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    kernel = self.param('kernel', initializers.weight_init(cfg, ('embed', 'vocab')),
                        (cfg.embed_dim, cfg.vocab_size), cfg.jnp_param_dtype)
    logits = jnp.einsum('bte,ev->btv', x, kernel.astype(cfg.jnp_dtype),
                        preferred_element_type=jnp.float32)
    return nn.with_logical_constraint(logits, ('batch', 'length', 'vocab'))
