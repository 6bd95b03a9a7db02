"""CLIP, the frozen dense retriever of retrieval augmentation (RA-CM3, arXiv 2211.12561, section 3;
CM3Leon, arXiv 2309.02591, section 2.1).

A ViT image tower and a causal text transformer, each projected (without bias) into one shared
space. Module and parameter names follow transformers' CLIPModel, so that a checkpoint tensor's
name is its parameter path with '.' for '/' (see ``interop.hf_clip``). Computation is float32:
the retriever is frozen and small next to the decoder.
"""

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from cm3leon_jax.models.clip_config import ACTIVATIONS, CLIPConfig


def _layer_norm(config: CLIPConfig, name: str) -> nn.LayerNorm:
  # The two-pass variance, as torch computes it: E[x^2] - E[x]^2 loses digits on large activations.
  return nn.LayerNorm(epsilon=config.layer_norm_eps, use_fast_variance=False, name=name)


class Attention(nn.Module):
  """Multi-head self-attention with biased q/k/v/out projections."""

  heads: int

  @nn.compact
  def __call__(self, x, mask: Optional[jax.Array]):  # mask: bool [batch, 1, query, key] or None
    batch, length, width = x.shape
    head_dim = width // self.heads
    split = lambda name: nn.Dense(width, name=name)(x).reshape(batch, length, self.heads, head_dim)
    q, k, v = split('q_proj'), split('k_proj'), split('v_proj')
    logits = jnp.einsum('bqhd,bkhd->bhqk', q, k) * head_dim ** -0.5
    if mask is not None:
      # A finite fill: a row with every key masked (a pad query) stays finite instead of NaN,
      # and NaN values would leak into later layers through 0 * NaN.
      logits = jnp.where(mask, logits, jnp.finfo(logits.dtype).min)
    weights = jax.nn.softmax(logits, axis=-1)
    out = jnp.einsum('bhqk,bkhd->bqhd', weights, v).reshape(batch, length, width)
    return nn.Dense(width, name='out_proj')(out)


class Mlp(nn.Module):
  """fc1 -> activation -> fc2, both biased."""

  config: CLIPConfig
  hidden: int

  @nn.compact
  def __call__(self, x):
    h = ACTIVATIONS[self.config.activation](nn.Dense(self.hidden, name='fc1')(x))
    return nn.Dense(x.shape[-1], name='fc2')(h)


class EncoderLayer(nn.Module):
  """A pre-LayerNorm transformer block: x + attn(LN(x)), then x + mlp(LN(x))."""

  config: CLIPConfig
  heads: int
  mlp: int

  @nn.compact
  def __call__(self, x, mask):
    cfg = self.config
    x = x + Attention(self.heads, name='self_attn')(_layer_norm(cfg, 'layer_norm1')(x), mask)
    return x + Mlp(cfg, self.mlp, name='mlp')(_layer_norm(cfg, 'layer_norm2')(x))


class Encoder(nn.Module):
  """A stack of EncoderLayers (transformers' `encoder.layers.{i}`)."""

  config: CLIPConfig
  layers: int
  heads: int
  mlp: int

  @nn.compact
  def __call__(self, x, mask=None):
    for i in range(self.layers):
      x = EncoderLayer(self.config, self.heads, self.mlp, name=f'layers_{i}')(x, mask)
    return x


class VisionEmbeddings(nn.Module):
  """Bias-free patch convolution, a learned class token in front, learned positions added."""

  config: CLIPConfig

  @nn.compact
  def __call__(self, pixels):  # [batch, H, W, 3]
    cfg = self.config
    p = cfg.patch_size
    patches = nn.Conv(cfg.vision_hidden, (p, p), strides=(p, p), padding='VALID', use_bias=False,
                      name='patch_embedding')(pixels)
    patches = patches.reshape(pixels.shape[0], -1, cfg.vision_hidden)  # Row-major over the grid.
    cls = self.param('class_embedding', nn.initializers.normal(1.0), (cfg.vision_hidden,))
    cls = jnp.broadcast_to(cls, (pixels.shape[0], 1, cfg.vision_hidden))
    x = jnp.concatenate([cls, patches], axis=1)
    positions = nn.Embed(cfg.num_patches + 1, cfg.vision_hidden, name='position_embedding')
    return x + positions.embedding[None]


class VisionTransformer(nn.Module):
  """The image tower up to the pooled class token (post-LayerNormed), before projection."""

  config: CLIPConfig

  @nn.compact
  def __call__(self, pixels):
    cfg = self.config
    if pixels.shape[1:] != (cfg.image_size, cfg.image_size, 3):
      raise ValueError(f'CLIP expects images [batch, {cfg.image_size}, {cfg.image_size}, 3], '
                       f'got {pixels.shape}.')
    x = VisionEmbeddings(cfg, name='embeddings')(pixels.astype(jnp.float32))
    x = _layer_norm(cfg, 'pre_layrnorm')(x)  # Sic: transformers' (and OpenAI's) spelling.
    x = Encoder(cfg, cfg.vision_layers, cfg.vision_heads, cfg.vision_mlp, name='encoder')(x)
    return _layer_norm(cfg, 'post_layernorm')(x[:, 0])


class TextEmbeddings(nn.Module):
  """Token embeddings plus learned absolute positions."""

  config: CLIPConfig

  @nn.compact
  def __call__(self, ids):
    cfg = self.config
    tokens = nn.Embed(cfg.vocab_size, cfg.text_hidden, name='token_embedding')(ids)
    positions = nn.Embed(cfg.max_positions, cfg.text_hidden, name='position_embedding')
    return tokens + positions.embedding[None, :ids.shape[1]]


def eos_positions(config: CLIPConfig, ids: jax.Array) -> jax.Array:
  """The position pooled for each text: the first `eos_token_id`, or for checkpoints with the
  legacy eos_token_id 2, the largest token id (OpenAI's end token is the last of its vocabulary)."""
  if config.eos_token_id == 2:
    return jnp.argmax(ids, axis=-1)
  return jnp.argmax(ids == config.eos_token_id, axis=-1)


class TextTransformer(nn.Module):
  """The causal text tower up to the pooled end-of-text state, before projection."""

  config: CLIPConfig

  @nn.compact
  def __call__(self, ids, attention_mask=None):
    cfg = self.config
    length = ids.shape[1]
    if length > cfg.max_positions:
      raise ValueError(f'CLIP texts are at most {cfg.max_positions} tokens, got {length}.')
    mask = jnp.tril(jnp.ones((length, length), bool))[None, None]
    if attention_mask is not None:  # Padding hides keys; pad queries are never pooled.
      mask = mask & attention_mask.astype(bool)[:, None, None, :]
    x = TextEmbeddings(cfg, name='embeddings')(ids)
    x = Encoder(cfg, cfg.text_layers, cfg.text_heads, cfg.text_mlp, name='encoder')(x, mask)
    x = _layer_norm(cfg, 'final_layer_norm')(x)
    return x[jnp.arange(ids.shape[0]), eos_positions(cfg, ids)]


class CLIP(nn.Module):
  """Image and text towers with their projections into the shared embedding space."""

  config: CLIPConfig

  def setup(self):
    cfg = self.config
    self.vision_model = VisionTransformer(cfg)
    self.text_model = TextTransformer(cfg)
    self.visual_projection = nn.Dense(cfg.projection_dim, use_bias=False)
    self.text_projection = nn.Dense(cfg.projection_dim, use_bias=False)

  def encode_image(self, pixels: jax.Array) -> jax.Array:
    """Normalised pixels [B, H, W, 3] -> unnormalised image embeddings [B, projection_dim]."""
    return self.visual_projection(self.vision_model(pixels))

  def encode_text(self, ids: jax.Array, attention_mask: Optional[jax.Array] = None) -> jax.Array:
    """Token ids [B, L] (with an end token each) -> unnormalised text embeddings [B, proj_dim]."""
    return self.text_projection(self.text_model(ids, attention_mask))

  def __call__(self, pixels, ids, attention_mask=None):
    """(image embeddings, text embeddings); `init` goes through here to create both towers."""
    return self.encode_image(pixels), self.encode_text(ids, attention_mask)


def _l2_normalise(x: jax.Array) -> jax.Array:
  return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


def document_embedding(text_emb: Optional[jax.Array] = None,
                       image_emb: Optional[jax.Array] = None) -> jax.Array:
  """A retrieval document's embedding: the mean of its L2-normalised text and image embeddings.

  A single-modality document is its one normalised embedding. Both arguments are [..., dim]
  (as from ``CLIP.encode_text`` / ``encode_image``). The mean of two unit vectors is not itself
  unit-norm; the retriever's inner-product search scores it as it is (RA-CM3, arXiv 2211.12561,
  section 3).
  """
  parts = [_l2_normalise(e.astype(jnp.float32)) for e in (text_emb, image_emb) if e is not None]
  if not parts:
    raise ValueError('document_embedding needs a text or an image embedding (got neither).')
  return sum(parts) / len(parts)
