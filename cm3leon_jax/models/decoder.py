"""The CM3Leon / Chameleon decoder-only transformer.

``Decoder(config)(tokens, positions=None, segment_ids=None, decode=False) -> logits``

* Training and scoring: causal attention inside each segment of a packed batch.
* Decoding: call ``init_cache`` once, then apply with ``decode=True, mutable=['cache']``: first the
  prompt (prefill), then one token at a time. Positions default to each example's running count.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from cm3leon_jax.models import layers, remat
from cm3leon_jax.models.attention import Attention
from cm3leon_jax.models.config import DecoderConfig


class Block(nn.Module):
  """One transformer block: pre-norm (or Chameleon's swin order) attention and MLP, residuals."""

  config: DecoderConfig
  decode: bool = False

  @nn.compact
  def __call__(self, x, positions, segment_ids):
    cfg = self.config
    attention = Attention(cfg, decode=self.decode, name='attention')
    mlp = layers.Mlp(cfg, name='mlp')
    attention_norm = layers.BlockNorm(cfg, name='attention_norm')
    mlp_norm = layers.BlockNorm(cfg, name='mlp_norm')
    if cfg.swin_norm:
      h = x + attention_norm(attention(x, positions, segment_ids))
      out = h + mlp_norm(mlp(h))
    else:
      h = x + attention(attention_norm(x), positions, segment_ids)
      out = h + mlp(mlp_norm(h))
    out = nn.with_logical_constraint(out, ('batch', 'length', 'embed'))
    if cfg.scan_layers:
      return out, None  # nn.scan's (carry, per-layer output).
    return out


def _block_stack(config: DecoderConfig, decode: bool):
  """The layer stack's module class: Block, rematerialised by policy, scanned if configured."""
  block = Block
  if remat.uses_remat(config.remat_policy):
    block = nn.remat(block, policy=remat.policy(config.remat_policy),
                     prevent_cse=not config.scan_layers)
  if config.scan_layers:
    block = nn.scan(
        block, variable_axes={'params': 0, 'cache': 0}, split_rngs={'params': True},
        in_axes=(nn.broadcast, nn.broadcast), length=config.num_layers,
        metadata_params={nn.PARTITION_NAME: 'layers'})
  return functools.partial(block, config, decode)


class Decoder(nn.Module):
  """Token ids in, next-token logits (float32) out."""

  config: DecoderConfig

  @nn.compact
  def __call__(self, tokens, positions=None, segment_ids=None, decode: bool = False):
    """Run the decoder.

    Args:
      tokens: [batch, length] int token ids.
      positions: [batch, length] int positions; default 0..length-1 (or, when decoding, each
        example's count of tokens already decoded).
      segment_ids: [batch, length] ids of packed sequences (training only); tokens attend only
        within their segment. None means one sequence per row.
      decode: use and update the KV cache (collection 'cache', which must be mutable).

    Returns:
      [batch, length, vocab_size] float32 logits. A token id outside the vocabulary (or a position
      outside the cm3leon position table) makes its sequence's logits NaN, so the loss shows it,
      rather than silently wrapping around.
    """
    cfg = self.config
    if tokens.shape[-1] > cfg.max_length:
      raise ValueError(f'Sequence length {tokens.shape[-1]} exceeds max_length={cfg.max_length} '
                       'of the DecoderConfig.')
    if positions is None:
      positions = self._default_positions(tokens, decode)
    x = layers.Embed(cfg, name='embed')(tokens, positions)
    stack = _block_stack(cfg, decode)
    if cfg.scan_layers:
      x, _ = stack(name='layers')(x, positions, segment_ids)
    else:
      for i in range(cfg.num_layers):
        x = stack(name=f'layers_{i}')(x, positions, segment_ids)
    x = layers.BlockNorm(cfg, name='final_norm')(x)
    return layers.LMHead(cfg, name='lm_head')(x)

  def _default_positions(self, tokens, decode):
    batch, length = tokens.shape
    steps = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
    if not decode:
      return steps
    initialised = self.has_variable('cache', 'position')
    position = self.variable('cache', 'position', jnp.zeros, (batch,), jnp.int32)
    start = position.value
    if initialised:
      position.value = start + length
    return start[:, None] + steps


def init_cache(model: Decoder, batch_size: int, max_length: int):
  """An empty KV cache for `batch_size` sequences of up to `max_length` tokens (no params needed)."""
  tokens = jax.ShapeDtypeStruct((batch_size, max_length), jnp.int32)
  shapes = jax.eval_shape(
      lambda t: model.init(jax.random.key(0), t, decode=True), tokens)['cache']
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), nn.meta.unbox(shapes))


def init_params(model: Decoder, rng, batch_size: int = 1, length: int = 8):
  """Randomly initialised parameters (boxed with their logical axis names)."""
  tokens = jnp.zeros((batch_size, length), jnp.int32)
  return model.init(rng, tokens)['params']
