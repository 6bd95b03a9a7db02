"""Meta's Chameleon image tokenizer files: ``vqgan.ckpt`` (a taming Lightning checkpoint) and
``vqgan.yaml`` (taming's VQModel config) -> our VQGANConfig and params.

Usage::

  config, params = load_meta_tokenizer('tokenizer/vqgan.ckpt', 'tokenizer/vqgan.yaml')
"""

from typing import Any, Mapping

from cm3leon_jax.interop.errors import UnsupportedConfigError
from cm3leon_jax.interop.taming_vqgan import load_taming_checkpoint, params_from_torch_state_dict
from cm3leon_jax.models.config import ConfigError
from cm3leon_jax.models.vqgan_config import VQGANConfig

# taming ddconfig fields that VQGANConfig has under the same name.
_DD_FIELDS = ('resolution', 'in_channels', 'ch', 'ch_mult', 'num_res_blocks', 'attn_resolutions',
              'z_channels', 'double_z', 'dropout')
# Optional ddconfig switches of taming's Encoder/Decoder, with the only value our VQGAN implements.
_DD_FIXED = {'out_ch': None, 'attn_type': 'vanilla', 'resamp_with_conv': True,
             'give_pre_end': False, 'tanh_out': False}


def _yaml_field(fields: Mapping[str, Any], key: str, where: str, path: str):
  if not isinstance(fields, Mapping) or key not in fields:
    raise UnsupportedConfigError(f'{path}: the taming config has no {where}{key}.')
  return fields[key]


def _check_fixed_switches(dd: Mapping[str, Any], path: str) -> None:
  """Refuse ddconfig keys that would change the architecture away from ours."""
  for key, value in dd.items():
    if key in _DD_FIELDS:
      continue
    if key not in _DD_FIXED:
      raise UnsupportedConfigError(f'{path}: unknown field model.params.ddconfig.{key}={value!r}.')
    # out_ch is the decoder's output width; ours always reconstructs in_channels.
    want = dd.get('in_channels') if key == 'out_ch' else _DD_FIXED[key]
    if value != want:
      raise UnsupportedConfigError(
          f'{path}: model.params.ddconfig.{key}={value!r} is not supported (only {want!r}).')


def config_from_yaml(path: str) -> VQGANConfig:
  """The VQGANConfig of a taming VQModel YAML (e.g. Meta's Chameleon ``vqgan.yaml``).

  Raises:
    UnsupportedConfigError: a field is missing or has a value our VQGAN cannot represent (double_z,
      out_ch != in_channels, index remapping, ...); the message names the file and the field.
  """
  import yaml  # Local import: only YAML configs need PyYAML.

  with open(path) as f:
    document = yaml.safe_load(f)
  params = _yaml_field(_yaml_field(document, 'model', '', path), 'params', 'model.', path)
  dd = _yaml_field(params, 'ddconfig', 'model.params.', path)
  values = {key: _yaml_field(dd, key, 'model.params.ddconfig.', path) for key in _DD_FIELDS}
  _check_fixed_switches(dd, path)
  if params.get('remap') is not None:
    raise UnsupportedConfigError(f'{path}: model.params.remap (codebook index remapping) is not '
                                 'supported.')
  try:
    return VQGANConfig(embed_dim=_yaml_field(params, 'embed_dim', 'model.params.', path),
                       n_embed=_yaml_field(params, 'n_embed', 'model.params.', path), **values)
  except ConfigError as e:
    raise UnsupportedConfigError(f'{path}: {e}') from e


def load_meta_tokenizer(ckpt_path: str, yaml_path: str):
  """(VQGANConfig, our params) of Meta's Chameleon tokenizer files ``vqgan.ckpt`` + ``vqgan.yaml``.

  Raises:
    UnsupportedConfigError: the YAML describes a model our VQGAN cannot represent.
    CheckpointMismatchError: the checkpoint's tensors do not match the YAML's shapes.
  """
  config = config_from_yaml(yaml_path)
  return config, params_from_torch_state_dict(load_taming_checkpoint(ckpt_path), config)
