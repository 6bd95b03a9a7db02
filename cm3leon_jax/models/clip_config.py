"""The dataclass that configures the frozen CLIP retriever (image and text towers), with validation.

Defaults are OpenAI's ViT-B/32, the retriever of CM3Leon (arXiv 2309.02591, section 2.1).
``from_hf_config_dict`` reads the config.json that transformers' CLIPModel.save_pretrained writes.
"""

import dataclasses
from typing import Any, Mapping

import jax

from cm3leon_jax.models.config import ConfigError

# The MLP activations by CLIPConfig.activation name (transformers' hidden_act); clip.Mlp applies
# them. Unlike the decoder's, 'gelu' here is the exact (erf) form, as in transformers.
ACTIVATIONS = {
    'quick_gelu': lambda x: x * jax.nn.sigmoid(1.702 * x),
    'gelu': lambda x: jax.nn.gelu(x, approximate=False),
}

# transformers' CLIPTextConfig / CLIPVisionConfig defaults, for fields a config.json leaves out.
_HF_TEXT_DEFAULTS = {
    'vocab_size': 49408, 'hidden_size': 512, 'intermediate_size': 2048, 'num_hidden_layers': 12,
    'num_attention_heads': 8, 'max_position_embeddings': 77, 'hidden_act': 'quick_gelu',
    'layer_norm_eps': 1e-5, 'eos_token_id': 49407,
}
_HF_VISION_DEFAULTS = {
    'hidden_size': 768, 'intermediate_size': 3072, 'num_hidden_layers': 12,
    'num_attention_heads': 12, 'num_channels': 3, 'image_size': 224, 'patch_size': 32,
    'hidden_act': 'quick_gelu', 'layer_norm_eps': 1e-5,
}


@dataclasses.dataclass(frozen=True)
class CLIPConfig:
  """Shapes of a CLIP model (transformers' CLIPModel layout).

  Attributes:
    image_size: side of the square input images, in pixels.
    patch_size: side of a ViT patch; image_size must be a multiple.
    vision_hidden, vision_layers, vision_heads, vision_mlp: the image transformer's width, depth,
      attention heads and MLP width.
    vocab_size: text tokens.
    max_positions: the text transformer's learned positions (the longest text).
    text_hidden, text_layers, text_heads, text_mlp: the text transformer's shapes.
    eos_token_id: the token whose (first) position gives the pooled text feature; 2 selects the
      legacy rule of early checkpoints, the position of the largest token id.
    projection_dim: width of the shared image-text embedding space.
    layer_norm_eps: epsilon of every LayerNorm.
    activation: the MLP activation, 'quick_gelu' (x * sigmoid(1.702 x), OpenAI's) or 'gelu' (exact).
  """

  image_size: int = 224
  patch_size: int = 32
  vision_hidden: int = 768
  vision_layers: int = 12
  vision_heads: int = 12
  vision_mlp: int = 3072
  vocab_size: int = 49408
  max_positions: int = 77
  text_hidden: int = 512
  text_layers: int = 12
  text_heads: int = 8
  text_mlp: int = 2048
  eos_token_id: int = 49407
  projection_dim: int = 512
  layer_norm_eps: float = 1e-5
  activation: str = 'quick_gelu'

  def __post_init__(self):
    for name in ('image_size', 'patch_size', 'vision_hidden', 'vision_layers', 'vision_heads',
                 'vision_mlp', 'vocab_size', 'max_positions', 'text_hidden', 'text_layers',
                 'text_heads', 'text_mlp', 'projection_dim'):
      value = getattr(self, name)
      if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f'CLIPConfig.{name} must be a positive int, got {value!r}.')
    if self.image_size % self.patch_size:
      raise ConfigError(f'CLIPConfig.image_size={self.image_size} must be a multiple of '
                        f'patch_size={self.patch_size}.')
    for tower in ('vision', 'text'):
      hidden, heads = getattr(self, f'{tower}_hidden'), getattr(self, f'{tower}_heads')
      if hidden % heads:
        raise ConfigError(f'CLIPConfig.{tower}_hidden={hidden} must be a multiple of '
                          f'{tower}_heads={heads}.')
    if not isinstance(self.eos_token_id, int) or not 0 <= self.eos_token_id < self.vocab_size:
      raise ConfigError(f'CLIPConfig.eos_token_id must be a token id in [0, vocab_size='
                        f'{self.vocab_size}), got {self.eos_token_id!r}.')
    if not (isinstance(self.layer_norm_eps, (int, float)) and self.layer_norm_eps > 0):
      raise ConfigError(f'CLIPConfig.layer_norm_eps must be > 0, got {self.layer_norm_eps!r}.')
    if self.activation not in ACTIVATIONS:
      raise ConfigError(f'CLIPConfig.activation must be one of {tuple(ACTIVATIONS)}, '
                        f'got {self.activation!r}.')

  @property
  def num_patches(self) -> int:
    """Patches per image (the image sequence is one class token longer)."""
    return (self.image_size // self.patch_size) ** 2

  def replace(self, **changes) -> 'CLIPConfig':
    """A copy with `changes` applied (validated again)."""
    return dataclasses.replace(self, **changes)


def _sub_config(d: Mapping[str, Any], key: str, defaults: Mapping[str, Any]) -> dict:
  # Early checkpoints (e.g. openai/clip-vit-base-patch32) also carry `<key>_dict` overrides,
  # which transformers applies on top of `<key>`.
  return {**defaults, **(d.get(key) or {}), **(d.get(f'{key}_dict') or {})}


def _single_eos(eos) -> int:
  if isinstance(eos, (list, tuple)):
    if len(eos) != 1:
      raise ConfigError(f'text_config.eos_token_id must be one id for CLIP pooling, got {eos!r}.')
    eos = eos[0]
  return eos


def from_hf_config_dict(d: Mapping[str, Any]) -> CLIPConfig:
  """The CLIPConfig of a transformers CLIPModel config.json (with text_config and vision_config).

  Raises:
    ConfigError: a field our CLIP cannot represent (the message names it): towers with different
      activations or LayerNorm epsilons, an activation other than quick_gelu / gelu, or images
      that are not 3-channel squares.
  """
  text = _sub_config(d, 'text_config', _HF_TEXT_DEFAULTS)
  vision = _sub_config(d, 'vision_config', _HF_VISION_DEFAULTS)
  for field in ('hidden_act', 'layer_norm_eps'):
    if text[field] != vision[field]:
      raise ConfigError(f'CLIP towers must share {field}: text_config has {text[field]!r}, '
                        f'vision_config has {vision[field]!r}.')
  if vision['num_channels'] != 3:
    raise ConfigError(f"vision_config.num_channels must be 3, got {vision['num_channels']!r}.")
  for field in ('image_size', 'patch_size'):
    if not isinstance(vision[field], int):
      raise ConfigError(f'vision_config.{field} must be one int (square), got {vision[field]!r}.')
  return CLIPConfig(
      image_size=vision['image_size'], patch_size=vision['patch_size'],
      vision_hidden=vision['hidden_size'], vision_layers=vision['num_hidden_layers'],
      vision_heads=vision['num_attention_heads'], vision_mlp=vision['intermediate_size'],
      vocab_size=text['vocab_size'], max_positions=text['max_position_embeddings'],
      text_hidden=text['hidden_size'], text_layers=text['num_hidden_layers'],
      text_heads=text['num_attention_heads'], text_mlp=text['intermediate_size'],
      eos_token_id=_single_eos(text['eos_token_id']),
      projection_dim=d.get('projection_dim') or 512,
      layer_norm_eps=float(text['layer_norm_eps']), activation=text['hidden_act'])
