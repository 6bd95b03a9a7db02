"""Causal self-attention with grouped KV heads, packed-sequence masking and a KV cache.

Training and scoring attend causally within each segment (``segment_ids`` of packed sequences).
Decoding keeps keys and values in the 'cache' collection: a call writes its T new tokens at each
example's own cache index (prefill writes the prompt, a step writes one token) and attends to every
cached slot up to its own.
"""

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from cm3leon_jax.models import layers
from cm3leon_jax.models.blocked_attention import blocked_causal_attention
from cm3leon_jax.models.config import DecoderConfig


def segment_mask(segment_ids: Optional[jax.Array]) -> Optional[jax.Array]:
  """[batch, 1, T, T] mask letting a token see only tokens of its own segment (None: no packing)."""
  if segment_ids is None:
    return None
  same = segment_ids[:, :, None] == segment_ids[:, None, :]
  return same[:, None, :, :]


class Attention(nn.Module):
  """Multi-head causal self-attention (grouped-query when num_kv_heads < num_heads)."""

  config: DecoderConfig
  decode: bool = False

  @nn.compact
  def __call__(self, x, positions, segment_ids=None):
    cfg = self.config
    heads, kv_heads, head_dim = cfg.num_heads, cfg.kv_heads, cfg.per_head_dim
    query = layers.dense(cfg, (heads, head_dim), ('embed', 'heads', 'kv'), 'query')(x)
    key = layers.dense(cfg, (kv_heads, head_dim), ('embed', 'kv_heads', 'kv'), 'key')(x)
    value = layers.dense(cfg, (kv_heads, head_dim), ('embed', 'kv_heads', 'kv'), 'value')(x)
    if cfg.qk_norm:
      query = layers.HeadNorm(cfg, 'heads', name='query_norm')(query)
      key = layers.HeadNorm(cfg, 'kv_heads', name='key_norm')(key)
    if cfg.family == 'chameleon':
      query = layers.apply_rope(query, positions, cfg.rope_theta)
      key = layers.apply_rope(key, positions, cfg.rope_theta)
    query = checkpoint_name(nn.with_logical_constraint(query, ('batch', 'length', 'heads', 'kv')),
                            'query_proj')
    key = checkpoint_name(nn.with_logical_constraint(key, ('batch', 'length', 'kv_heads', 'kv')),
                          'key_proj')
    value = checkpoint_name(nn.with_logical_constraint(value, ('batch', 'length', 'kv_heads', 'kv')),
                            'value_proj')

    if self.decode:
      key, value, mask = self._update_cache(key, value)
      out = jax.nn.dot_product_attention(query, key, value, mask=mask,
                                         implementation=self._library_impl())
    elif cfg.attention_impl == 'blocked':
      out = blocked_causal_attention(query, key, value, segment_ids, cfg.attention_block)
    else:
      out = jax.nn.dot_product_attention(query, key, value, mask=segment_mask(segment_ids),
                                         is_causal=True, implementation=self._library_impl())
    out = nn.with_logical_constraint(out, ('batch', 'length', 'heads', 'kv'))
    out = layers.dense(cfg, x.shape[-1], ('heads', 'kv', 'embed'), 'out', contract=2,
                       zero_init=cfg.zero_init_residual)(out)
    return checkpoint_name(out, 'out_proj')

  def _library_impl(self):
    """The `implementation` argument of jax.nn.dot_product_attention ('blocked' is ours)."""
    return self.config.attention_impl if self.config.attention_impl in ('xla', 'cudnn') else None

  def _update_cache(self, key, value):
    """Write the new keys/values at each example's cache index; return cache and attention mask.

    The cache variables take their shape from the first (initialising) call, whose input length is
    the longest sequence the cache will hold (see ``decoder.init_cache``).
    """
    batch, length = key.shape[:2]
    initialised = self.has_variable('cache', 'cached_key')
    cached_key = self.variable('cache', 'cached_key', jnp.zeros, key.shape, key.dtype)
    cached_value = self.variable('cache', 'cached_value', jnp.zeros, value.shape, value.dtype)
    index = self.variable('cache', 'cache_index', jnp.zeros, (batch,), jnp.int32)
    if not initialised:
      causal = jnp.tril(jnp.ones((length, length), bool))
      return key, value, jnp.broadcast_to(causal, (batch, 1, length, length))

    write = jax.vmap(lambda cache, new, start: jax.lax.dynamic_update_slice_in_dim(
        cache, new, start, axis=0))
    start = index.value
    cached_key.value = write(cached_key.value, key.astype(cached_key.value.dtype), start)
    cached_value.value = write(cached_value.value, value.astype(cached_value.value.dtype), start)
    index.value = start + length
    query_slots = start[:, None] + jnp.arange(length)  # [batch, T]
    capacity = cached_key.value.shape[1]
    mask = jnp.arange(capacity)[None, None, :] <= query_slots[:, :, None]  # [batch, T, capacity]
    return cached_key.value, cached_value.value, mask[:, None]
