"""transformers' Chameleon checkpoints (ChameleonForConditionalGeneration) <-> our 'chameleon'.

Only the text decoder is converted; the VQ image tokenizer (`model.vqmodel.*`) is ignored on load
and not written on save (see ``save_chameleon``).
"""

from typing import Any, Dict, Optional

from absl import logging

from cm3leon_jax.interop import mapping
from cm3leon_jax.interop.checkpoint_files import read_config
from cm3leon_jax.interop.errors import UnsupportedConfigError
from cm3leon_jax.interop.mapping import Rule
from cm3leon_jax.interop.transforms import Linear
from cm3leon_jax.models.config import DecoderConfig

_LAYER = 'model.layers.{i}.'

# The one table both directions walk. Rules for parameters a config lacks (QK-norm) are skipped.
RULES = (
    Rule('model.embed_tokens.weight', 'embed/token'),
    Rule(_LAYER + 'self_attn.q_proj.weight', 'layers_{i}/attention/query/kernel', Linear()),
    Rule(_LAYER + 'self_attn.k_proj.weight', 'layers_{i}/attention/key/kernel', Linear()),
    Rule(_LAYER + 'self_attn.v_proj.weight', 'layers_{i}/attention/value/kernel', Linear()),
    Rule(_LAYER + 'self_attn.o_proj.weight', 'layers_{i}/attention/out/kernel', Linear(in_dims=2)),
    Rule(_LAYER + 'self_attn.q_norm.weight', 'layers_{i}/attention/query_norm/scale'),
    Rule(_LAYER + 'self_attn.q_norm.bias', 'layers_{i}/attention/query_norm/bias'),
    Rule(_LAYER + 'self_attn.k_norm.weight', 'layers_{i}/attention/key_norm/scale'),
    Rule(_LAYER + 'self_attn.k_norm.bias', 'layers_{i}/attention/key_norm/bias'),
    # Both layer orders use these two norms: before attention / MLP, or (swin) after them.
    Rule(_LAYER + 'input_layernorm.weight', 'layers_{i}/attention_norm/scale'),
    Rule(_LAYER + 'post_attention_layernorm.weight', 'layers_{i}/mlp_norm/scale'),
    Rule(_LAYER + 'mlp.gate_proj.weight', 'layers_{i}/mlp/gate/kernel', Linear()),
    Rule(_LAYER + 'mlp.up_proj.weight', 'layers_{i}/mlp/up/kernel', Linear()),
    Rule(_LAYER + 'mlp.down_proj.weight', 'layers_{i}/mlp/wo/kernel', Linear()),
    Rule('model.norm.weight', 'final_norm/scale'),
    Rule('lm_head.weight', 'lm_head/kernel', Linear(), tied_to='model.embed_tokens.weight'),
)

# transformers' ChameleonConfig defaults, for fields a config.json leaves out.
_HF_DEFAULTS = {
    'vocab_size': 65536, 'hidden_size': 4096, 'intermediate_size': 11008,
    'num_hidden_layers': 32, 'num_attention_heads': 32, 'max_position_embeddings': 4096,
    'rms_norm_eps': 1e-5, 'swin_norm': False, 'hidden_act': 'silu', 'attention_bias': False,
    'mlp_bias': False, 'tie_word_embeddings': False,
}

# The smallest VQ-VAE config transformers builds (its GroupNorms need 32 channels). save_chameleon
# writes no VQ weights, so transformers initialises this placeholder randomly; pass the real
# vq_config and vocabulary_map through `extra_config` to keep a checkpoint's image tokenizer usable.
PLACEHOLDER_VQ_CONFIG = {
    'embed_dim': 4, 'num_embeddings': 8, 'latent_channels': 32, 'resolution': 16,
    'base_channels': 32, 'channel_multiplier': [1], 'num_res_blocks': 1, 'attn_resolutions': [],
}


def _is_vq(name: str) -> bool:
  return name.removeprefix(mapping.OPTIONAL_PREFIX).startswith('vqmodel.')


def config_from_hf(config_json: Dict[str, Any], **overrides) -> DecoderConfig:
  """The DecoderConfig of a transformers Chameleon config.json; `overrides` set other fields.

  transformers' Chameleon always applies QK-norm, so `qk_layernorm`, if present, defaults to True.
  """
  _check_supported(config_json)
  hf = {**_HF_DEFAULTS, **config_json}
  heads = hf['num_attention_heads']
  fields = dict(
      family='chameleon', vocab_size=hf['vocab_size'], num_layers=hf['num_hidden_layers'],
      embed_dim=hf['hidden_size'], num_heads=heads,
      num_kv_heads=hf.get('num_key_value_heads') or heads, mlp_dim=hf['intermediate_size'],
      max_length=hf['max_position_embeddings'], activation='silu', rope_theta=_rope_theta(hf),
      norm_eps=hf['rms_norm_eps'], qk_norm=bool(hf.get('qk_layernorm', True)),
      swin_norm=bool(hf['swin_norm']))
  return DecoderConfig(**{**fields, **overrides})


def _rope_theta(hf: Dict[str, Any]) -> float:
  """rope_theta at the top level (older transformers) or in rope_parameters (transformers 5)."""
  theta = hf.get('rope_theta') or (hf.get('rope_parameters') or {}).get('rope_theta')
  return float(theta or 10000.0)


def _check_supported(config_json: Dict[str, Any]) -> None:
  """One error naming every field of a config.json that the chameleon family cannot represent."""
  hf = {**_HF_DEFAULTS, **config_json}
  rope_type = (hf.get('rope_parameters') or {}).get('rope_type', 'default')
  head_dim = hf.get('head_dim')
  bad = {
      'model_type': hf.get('model_type', 'chameleon') != 'chameleon',
      'hidden_act': hf['hidden_act'] != 'silu',
      'attention_bias': bool(hf['attention_bias']),
      'mlp_bias': bool(hf['mlp_bias']),
      'rope_parameters.rope_type': rope_type != 'default',
      'rope_scaling': bool(hf.get('rope_scaling')),
      'head_dim': head_dim not in (None, hf['hidden_size'] // hf['num_attention_heads']),
  }
  fields = [f'{name}={_field(hf, name)!r}' for name, is_bad in bad.items() if is_bad]
  if fields:
    raise UnsupportedConfigError(
        f'This Chameleon config is not the chameleon block (silu SwiGLU without biases, default '
        f'RoPE, head_dim = hidden_size / heads); unsupported: {", ".join(fields)}.')


def _field(hf, dotted):
  value = hf
  for key in dotted.split('.'):
    value = (value or {}).get(key)
  return value


def config_to_hf(config: DecoderConfig,
                 extra_config: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
  """A config.json from which ChameleonForConditionalGeneration.from_pretrained builds `config`."""
  problems = []
  if config.family != 'chameleon':
    problems.append(f'family={config.family!r} (need chameleon)')
  if not config.qk_norm:
    problems.append('qk_norm=False (transformers always applies QK-norm)')
  if config.per_head_dim * config.num_heads != config.embed_dim:
    problems.append(f'head_dim={config.per_head_dim} (transformers uses embed_dim / num_heads)')
  if problems:
    raise UnsupportedConfigError(f'Cannot save as a Chameleon checkpoint: {"; ".join(problems)}.')
  hf = {
      'model_type': 'chameleon', 'architectures': ['ChameleonForConditionalGeneration'],
      'vocab_size': config.vocab_size, 'hidden_size': config.embed_dim,
      'intermediate_size': config.hidden_dim, 'num_hidden_layers': config.num_layers,
      'num_attention_heads': config.num_heads, 'num_key_value_heads': config.kv_heads,
      'max_position_embeddings': config.max_length, 'rms_norm_eps': config.norm_eps,
      'rope_parameters': {'rope_type': 'default', 'rope_theta': config.rope_theta},
      'swin_norm': config.swin_norm, 'hidden_act': 'silu', 'attention_bias': False,
      'mlp_bias': False, 'tie_word_embeddings': False, 'model_parallel_size': 1,
      'vq_config': PLACEHOLDER_VQ_CONFIG,
      # transformers indexes this map (image-token ids) even for text-only use; {} has no images.
      'vocabulary_map': {},
  }
  return {**hf, **(extra_config or {})}


def load_chameleon(path: str, config: Optional[DecoderConfig] = None, place=None, **overrides):
  """Load a directory written by transformers' ChameleonForConditionalGeneration.save_pretrained.

  Args:
    path: directory with config.json and model.safetensors (or a sharded index).
    config: the DecoderConfig to load into; None derives it from config.json.
    place: see ``mapping.load`` (each parameter put on its devices as soon as it is read).
    **overrides: DecoderConfig fields to change, e.g. dtype='float32' (compute dtype),
      param_dtype='bfloat16' (dtype of the returned arrays), scan_layers=False.

  Returns:
    (config, params): params is a plain tree of numpy arrays shaped like `Decoder(config).init`'s
    unboxed params. Raises CheckpointMismatchError on any missing, extra or misshapen tensor.
  """
  hf = read_config(path)
  _check_supported(hf)  # Also when `config` is given: it does not vouch for the checkpoint.
  config = config.replace(**overrides) if config else config_from_hf(hf, **overrides)
  tied = bool(hf.get('tie_word_embeddings', False))
  params, ignored = mapping.load(path, RULES, config, tied, ignore=_is_vq, place=place)
  vq = sum(map(_is_vq, ignored))
  logging.info('Loaded Chameleon from %s; ignored %d VQ image-tokenizer tensors (model.vqmodel.*)'
               ' and %d tied copies.', path, vq, len(ignored) - vq)
  return config, params


def save_chameleon(path: str, config: DecoderConfig, params, dtype: Optional[str] = None,
                   extra_config: Optional[Dict[str, Any]] = None,
                   extra_tensors: Optional[Dict[str, Any]] = None) -> None:
  """Write `params` as a checkpoint that ChameleonForConditionalGeneration.from_pretrained loads.

  Args:
    path: output directory (created).
    config: the params' DecoderConfig (family 'chameleon' with qk_norm).
    params: boxed or plain params, scanned or not.
    dtype: dtype of the written tensors; None keeps each parameter's dtype.
    extra_config: config.json fields to add or replace (e.g. the original vq_config and
      vocabulary_map); by default a tiny placeholder VQ config is written, without VQ weights.
    extra_tensors: more tensors by HF name, e.g. the VQ-VAE's under model.vqmodel.*.
  """
  mapping.save(path, RULES, config, params, config_to_hf(config, extra_config), dtype,
               extra_tensors)
