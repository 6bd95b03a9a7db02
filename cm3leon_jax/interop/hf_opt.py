"""transformers' OPT checkpoints (OPTForCausalLM) <-> the 'cm3leon' family.

OPT with enable_bias=False, layer_norm_elementwise_affine=False, do_layer_norm_before=True and
word_embed_proj_dim == hidden_size is exactly the CM3Leon block; any other OPT is rejected.
"""

from typing import Any, Dict, Optional

from absl import logging

from cm3leon_jax.interop import mapping
from cm3leon_jax.interop.checkpoint_files import read_config
from cm3leon_jax.interop.errors import UnsupportedConfigError
from cm3leon_jax.interop.mapping import Rule
from cm3leon_jax.interop.transforms import Linear, SkipRows
from cm3leon_jax.models.config import DecoderConfig

_LAYER = 'model.decoder.layers.{i}.'

# OPT looks positions up at position + 2 (a fairseq leftover), so its table has 2 extra rows.
POSITION_OFFSET = 2

# The one table both directions walk.
RULES = (
    Rule('model.decoder.embed_tokens.weight', 'embed/token'),
    Rule('model.decoder.embed_positions.weight', 'embed/position', SkipRows(POSITION_OFFSET)),
    Rule(_LAYER + 'self_attn.q_proj.weight', 'layers_{i}/attention/query/kernel', Linear()),
    Rule(_LAYER + 'self_attn.k_proj.weight', 'layers_{i}/attention/key/kernel', Linear()),
    Rule(_LAYER + 'self_attn.v_proj.weight', 'layers_{i}/attention/value/kernel', Linear()),
    Rule(_LAYER + 'self_attn.out_proj.weight', 'layers_{i}/attention/out/kernel',
         Linear(in_dims=2)),
    Rule(_LAYER + 'fc1.weight', 'layers_{i}/mlp/wi/kernel', Linear()),
    Rule(_LAYER + 'fc2.weight', 'layers_{i}/mlp/wo/kernel', Linear()),
    Rule('lm_head.weight', 'lm_head/kernel', Linear(), tied_to='model.decoder.embed_tokens.weight'),
)

# transformers' activation names -> ours ('gelu' is exact in torch, tanh-approximated in ours).
_ACTIVATIONS = {'relu': 'relu', 'gelu': 'gelu_exact', 'gelu_new': 'gelu',
                'gelu_pytorch_tanh': 'gelu', 'silu': 'silu', 'swish': 'silu'}
_TO_HF_ACTIVATIONS = {'relu': 'relu', 'gelu_exact': 'gelu', 'gelu': 'gelu_new', 'silu': 'silu'}
_LAYER_NORM_EPS = 1e-5  # torch.nn.LayerNorm's default, which OPT does not configure.

# transformers' OPTConfig defaults, for fields a config.json leaves out.
_HF_DEFAULTS = {
    'vocab_size': 50272, 'hidden_size': 768, 'num_hidden_layers': 12, 'ffn_dim': 3072,
    'max_position_embeddings': 2048, 'num_attention_heads': 12, 'activation_function': 'relu',
    'do_layer_norm_before': True, '_remove_final_layer_norm': False, 'enable_bias': True,
    'layer_norm_elementwise_affine': True, 'tie_word_embeddings': True,
}


def config_from_hf(config_json: Dict[str, Any], **overrides) -> DecoderConfig:
  """The cm3leon DecoderConfig of an OPT config.json; `overrides` set other fields.

  Raises UnsupportedConfigError, naming each offending field, for OPTs that are not the CM3Leon
  block (biases, affine LayerNorms, post-LN, project_in/out, no final LayerNorm).
  """
  _check_supported(config_json)
  hf = {**_HF_DEFAULTS, **config_json}
  fields = dict(
      family='cm3leon', vocab_size=hf['vocab_size'], num_layers=hf['num_hidden_layers'],
      embed_dim=hf['hidden_size'], num_heads=hf['num_attention_heads'], mlp_dim=hf['ffn_dim'],
      max_length=hf['max_position_embeddings'],
      activation=_ACTIVATIONS[hf['activation_function']], norm_eps=_LAYER_NORM_EPS)
  return DecoderConfig(**{**fields, **overrides})


def _check_supported(config_json: Dict[str, Any]) -> None:
  """One error naming every field of a config.json that makes it another block than CM3Leon's."""
  hf = {**_HF_DEFAULTS, **config_json}
  proj_dim = hf.get('word_embed_proj_dim')
  bad = {
      'model_type': hf.get('model_type', 'opt') != 'opt',
      'enable_bias': bool(hf['enable_bias']),
      'layer_norm_elementwise_affine': bool(hf['layer_norm_elementwise_affine']),
      'do_layer_norm_before': not hf['do_layer_norm_before'],
      '_remove_final_layer_norm': bool(hf['_remove_final_layer_norm']),
      'word_embed_proj_dim': proj_dim is not None and proj_dim != hf['hidden_size'],
      'activation_function': hf['activation_function'] not in _ACTIVATIONS,
  }
  fields = [f'{name}={hf.get(name)!r}' for name, is_bad in bad.items() if is_bad]
  if fields:
    raise UnsupportedConfigError(
        'This OPT config is not the CM3Leon block (needs enable_bias=False, '
        'layer_norm_elementwise_affine=False, do_layer_norm_before=True, '
        f'word_embed_proj_dim == hidden_size); unsupported: {", ".join(fields)}.')


def config_to_hf(config: DecoderConfig) -> Dict[str, Any]:
  """A config.json that OPTForCausalLM.from_pretrained builds our decoder from."""
  problems = []
  if config.family != 'cm3leon':
    problems.append(f'family={config.family!r} (need cm3leon)')
  if config.kv_heads != config.num_heads:
    problems.append(f'num_kv_heads={config.kv_heads} (OPT has no grouped KV heads)')
  if config.per_head_dim * config.num_heads != config.embed_dim:
    problems.append(f'head_dim={config.per_head_dim} (OPT uses embed_dim / num_heads)')
  if config.norm_eps != _LAYER_NORM_EPS:
    problems.append(f'norm_eps={config.norm_eps} (OPT fixes {_LAYER_NORM_EPS})')
  if problems:
    raise UnsupportedConfigError(f'Cannot save as an OPT checkpoint: {"; ".join(problems)}.')
  d = config.embed_dim
  return {
      'model_type': 'opt', 'architectures': ['OPTForCausalLM'],
      'vocab_size': config.vocab_size, 'hidden_size': d, 'word_embed_proj_dim': d,
      'num_hidden_layers': config.num_layers, 'num_attention_heads': config.num_heads,
      'ffn_dim': config.hidden_dim, 'max_position_embeddings': config.max_length,
      'activation_function': _TO_HF_ACTIVATIONS[config.activation],
      'do_layer_norm_before': True, '_remove_final_layer_norm': False, 'enable_bias': False,
      'layer_norm_elementwise_affine': False, 'tie_word_embeddings': False,
      'dropout': 0.0, 'attention_dropout': 0.0, 'layerdrop': 0.0,
  }


def load_opt(path: str, config: Optional[DecoderConfig] = None, **overrides):
  """Load a directory written by transformers' OPTForCausalLM (or OPTModel) save_pretrained.

  Args:
    path: directory with config.json and model.safetensors (or a sharded index).
    config: the DecoderConfig to load into; None derives it from config.json.
    **overrides: DecoderConfig fields to change, e.g. dtype='float32' (compute dtype),
      param_dtype='bfloat16' (dtype of the returned arrays), scan_layers=False.

  Returns:
    (config, params) as for ``load_chameleon``. With tied embeddings (OPT's default) the LM head
    is the token embedding.
  """
  hf = read_config(path)
  _check_supported(hf)  # Also when `config` is given: it does not vouch for the checkpoint.
  config = config.replace(**overrides) if config else config_from_hf(hf, **overrides)
  tied = bool(hf.get('tie_word_embeddings', _HF_DEFAULTS['tie_word_embeddings']))
  params, ignored = mapping.load(path, RULES, config, tied)
  logging.info('Loaded OPT from %s (tied embeddings: %s; ignored %s).', path, tied, ignored)
  return config, params


def save_opt(path: str, config: DecoderConfig, params, dtype: Optional[str] = None) -> None:
  """Write cm3leon `params` as a checkpoint that OPTForCausalLM.from_pretrained loads (untied)."""
  mapping.save(path, RULES, config, params, config_to_hf(config), dtype)
