"""The VQ-GAN image tokenizer (CM3Leon, arXiv 2309.02591, section 2.1; Chameleon, arXiv
2405.09818, section 2.1) in taming-transformers' layout.

Make-A-Scene's and Chameleon's tokenizers are taming VQModels: Encoder -> quant_conv (1x1) ->
VectorQuantizer2 -> post_quant_conv (1x1) -> Decoder. Images are NHWC floats in [-1, 1]; codes are
int32 [B, h, w] with h = w = resolution / 2**(len(ch_mult) - 1).

Usage::

  model = VQGAN(config)
  params = model.init(key, images)['params']
  codes = model.apply({'params': params}, images, method=VQGAN.encode_to_codes)
  images = model.apply({'params': params}, codes, method=VQGAN.decode_codes)
"""

from typing import Dict, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from cm3leon_jax.models.vqgan_config import VQGANConfig
from cm3leon_jax.models.vqgan_layers import Level, Mid, conv, group_norm

LossTerms = Dict[str, jax.Array]


class Encoder(nn.Module):
  """Images [B, H, W, C] -> features [B, h, w, z_channels]."""

  config: VQGANConfig

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
    cfg = self.config
    x = conv(cfg.ch, 3, 'conv_in')(x)
    for i, (mult, side) in enumerate(zip(cfg.ch_mult, cfg.level_resolutions)):
      last = i == cfg.num_levels - 1
      x = Level(cfg.ch * mult, cfg.num_res_blocks, side in cfg.attn_resolutions,
                None if last else 'down', cfg.dropout, name=f'down_{i}')(x, deterministic)
    x = Mid(cfg.dropout, name='mid')(x, deterministic)
    return conv(cfg.z_channels, 3, 'conv_out')(nn.swish(group_norm('norm_out')(x)))


class Decoder(nn.Module):
  """Features [B, h, w, z_channels] -> images [B, H, W, in_channels]."""

  config: VQGANConfig

  @nn.compact
  def __call__(self, z: jax.Array, deterministic: bool = True) -> jax.Array:
    cfg = self.config
    x = conv(cfg.ch * cfg.ch_mult[-1], 3, 'conv_in')(z)
    x = Mid(cfg.dropout, name='mid')(x, deterministic)
    # Coarsest level first; taming still indexes `up` by level (up.0 is the finest).
    for i in reversed(range(cfg.num_levels)):
      side = cfg.level_resolutions[i]
      x = Level(cfg.ch * cfg.ch_mult[i], cfg.num_res_blocks + 1, side in cfg.attn_resolutions,
                None if i == 0 else 'up', cfg.dropout, name=f'up_{i}')(x, deterministic)
    return conv(cfg.in_channels, 3, 'conv_out')(nn.swish(group_norm('norm_out')(x)))


def _codebook_init(key, shape, dtype=jnp.float32):
  # taming's VectorQuantizer2 draws its codebook from U(-1/n_embed, 1/n_embed).
  bound = 1.0 / shape[0]
  return jax.random.uniform(key, shape, dtype, -bound, bound)


class VectorQuantizer(nn.Module):
  """taming's VectorQuantizer2 (legacy loss form), without index remapping.

  Each vector is replaced by its nearest codebook entry in squared L2 distance. The returned loss
  terms are 'commitment' = mean((sg(z_q) - z)^2), 'codebook' = mean((z_q - sg(z))^2) and
  'quantizer' = commitment + beta * codebook. That puts beta on the codebook term, the reverse of
  the VQ-VAE paper: taming kept this ordering (its `legacy=True` default) for compatibility, and
  the released checkpoints were trained with it.
  """

  config: VQGANConfig

  def setup(self):
    self.embedding = self.param('embedding', _codebook_init,
                                (self.config.n_embed, self.config.embed_dim))

  def nearest_codes(self, z: jax.Array) -> jax.Array:
    """Codes [...] of the nearest codebook entries to z [..., embed_dim]."""
    flat = z.reshape(-1, z.shape[-1])
    # Same expansion as taming (z^2 + e^2 - 2 z.e), so near-ties break the same way.
    distances = (jnp.sum(flat ** 2, axis=1, keepdims=True) + jnp.sum(self.embedding ** 2, axis=1)
                 - 2 * flat @ self.embedding.T)
    return jnp.argmin(distances, axis=1).astype(jnp.int32).reshape(z.shape[:-1])

  def lookup(self, codes: jax.Array) -> jax.Array:
    """Codebook vectors [..., embed_dim] of integer codes [...]."""
    return jnp.take(self.embedding, codes, axis=0)

  def __call__(self, z: jax.Array) -> Tuple[jax.Array, jax.Array, LossTerms]:
    """(z_q with straight-through gradients to z, codes, loss terms) for z [B, h, w, embed_dim]."""
    codes = self.nearest_codes(z)
    z_q = self.lookup(codes)
    commitment = jnp.mean((jax.lax.stop_gradient(z_q) - z) ** 2)
    codebook = jnp.mean((z_q - jax.lax.stop_gradient(z)) ** 2)
    losses = {'commitment': commitment, 'codebook': codebook,
              'quantizer': commitment + self.config.beta * codebook}
    # Straight-through estimator: the forward value is z_q, the gradient flows to z unchanged.
    return z + jax.lax.stop_gradient(z_q - z), codes, losses


class VQGAN(nn.Module):
  """The taming VQModel: encoder, quant_conv, quantize, post_quant_conv, decoder."""

  config: VQGANConfig

  def setup(self):
    cfg = self.config
    self.encoder = Encoder(cfg)
    self.quant_conv = conv(cfg.embed_dim, 1)
    self.quantize = VectorQuantizer(cfg)
    self.post_quant_conv = conv(cfg.z_channels, 1)
    self.decoder = Decoder(cfg)

  def encode(self, images: jax.Array,
             deterministic: bool = True) -> Tuple[jax.Array, jax.Array, LossTerms]:
    """Images [B, H, W, C] in [-1, 1] -> (quantized [B, h, w, embed_dim], codes, loss terms)."""
    return self.quantize(self.quant_conv(self.encoder(images, deterministic)))

  def encode_to_codes(self, images: jax.Array) -> jax.Array:
    """Images [B, H, W, C] in [-1, 1] -> int32 codes [B, h, w]."""
    return self.quantize.nearest_codes(self.quant_conv(self.encoder(images)))

  def decode(self, quantized: jax.Array, deterministic: bool = True) -> jax.Array:
    """Quantized vectors [B, h, w, embed_dim] -> images [B, H, W, C] (about [-1, 1])."""
    return self.decoder(self.post_quant_conv(quantized), deterministic)

  def decode_codes(self, codes: jax.Array) -> jax.Array:
    """Integer codes [B, h, w] -> images [B, H, W, C] (about [-1, 1])."""
    return self.decode(self.quantize.lookup(codes))

  def __call__(self, images: jax.Array,
               deterministic: bool = True) -> Tuple[jax.Array, LossTerms]:
    """(reconstruction [B, H, W, C], quantizer loss terms) of images [B, H, W, C]."""
    quantized, _, losses = self.encode(images, deterministic)
    return self.decode(quantized, deterministic), losses


def abstract_params(config: VQGANConfig):
  """Shapes and dtypes of the parameter tree of VQGAN(config), without allocating it."""
  images = jax.ShapeDtypeStruct((1, config.resolution, config.resolution, config.in_channels),
                                jnp.float32)
  return jax.eval_shape(VQGAN(config).init, jax.random.key(0), images)['params']
