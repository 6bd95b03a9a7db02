"""Meta's Chameleon release layout -> our 'chameleon' decoder.

  models/7b/consolidated.pth + params.json            one file
  models/30b/consolidated.00.pth ... .03.pth          model-parallel shards, each holding a slice
                                                      of every tensor
  tokenizer/text_tokenizer.json, vqgan.ckpt, vqgan.yaml

Each tensor is presented under transformers' name and layout (what transformers' conversion does):
shards are joined along the axis the model-parallel layer splits, the query and key projections
go from the interleaved rotary layout to the half-split one, and the per-head-dim QK-norm vectors
are repeated over their heads. ``hf_chameleon``'s single conversion table then applies, so both
layouts load through one table. Files are read with ``torch.load(weights_only=True, mmap=True)``:
nothing is unpickled, and a tensor is read from disk when it is converted.
"""

import glob
import json
import os
import pickle
import re
from typing import Dict, List, Optional, Tuple

import numpy as np

from cm3leon_jax.interop import hf_chameleon, mapping
from cm3leon_jax.interop.errors import CheckpointMismatchError, UnsupportedConfigError
from cm3leon_jax.models.config import DecoderConfig

PARAMS_FILE = 'params.json'
_LAYER = re.compile(r'model\.layers\.(\d+)\.(.+)')
# transformers' suffix -> (Meta's suffix, axis the shards split, rotary heads: 'q'/'k'/None).
_LAYER_TENSORS = {
    'self_attn.q_proj.weight': ('attention.wq.weight', 0, 'q'),
    'self_attn.k_proj.weight': ('attention.wk.weight', 0, 'k'),
    'self_attn.v_proj.weight': ('attention.wv.weight', 0, None),
    'self_attn.o_proj.weight': ('attention.wo.weight', 1, None),
    'mlp.gate_proj.weight': ('feed_forward.w1.weight', 0, None),
    'mlp.down_proj.weight': ('feed_forward.w2.weight', 1, None),
    'mlp.up_proj.weight': ('feed_forward.w3.weight', 0, None),
    'input_layernorm.weight': ('attention_norm.weight', None, None),
    'post_attention_layernorm.weight': ('ffn_norm.weight', None, None),
}
_QK_NORMS = {'self_attn.q_norm.': ('attention.q_normalization.', 'q'),
             'self_attn.k_norm.': ('attention.k_normalization.', 'k')}
_TOP_TENSORS = {'model.embed_tokens.weight': ('tok_embeddings.weight', 1),
                'model.norm.weight': ('norm.weight', None),
                'lm_head.weight': ('output.weight', 0)}


def shard_paths(model_dir: str) -> List[str]:
  """consolidated.pth, or consolidated.00.pth, .01.pth, ... in order."""
  single = os.path.join(model_dir, 'consolidated.pth')
  if os.path.isfile(single):
    return [single]
  shards = sorted(glob.glob(os.path.join(model_dir, 'consolidated.[0-9][0-9].pth')))
  if not shards:
    raise FileNotFoundError(f'{model_dir} holds neither consolidated.pth nor '
                            'consolidated.00.pth, ...: not a model folder of Meta\'s release.')
  return shards


def read_params(model_dir: str) -> Dict:
  """params.json (its 'model' section when nested, as the 30B release nests it)."""
  path = os.path.join(model_dir, PARAMS_FILE)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{model_dir} lacks {PARAMS_FILE}.')
  with open(path, encoding='utf-8') as f:
    params = json.load(f)
  return params.get('model', params)


def _open_shard(path: str):
  import torch  # Local import: only Meta's files need torch.
  try:
    return torch.load(path, map_location='cpu', weights_only=True, mmap=True)
  except pickle.UnpicklingError as e:  # Never fall back to unpickling: it runs the file's code.
    raise CheckpointMismatchError(
        f'{path} holds objects other than tensors, which torch.load(weights_only=True) refuses; '
        f're-save its tensors from a trusted environment. ({e})') from e


def _numpy(tensor) -> np.ndarray:
  return tensor.float().numpy()


def _from_interleaved(w: np.ndarray, heads: int) -> np.ndarray:
  """Rows of a query/key projection from Meta's interleaved rotary pairs to the half-split
  order transformers' (and our) rotary uses."""
  rows, cols = w.shape
  return w.reshape(heads, rows // heads // 2, 2, cols).transpose(0, 2, 1, 3).reshape(rows, cols)


class MetaChameleonFiles:
  """Meta's shards seen as a transformers checkpoint: the interface ``mapping.load`` reads."""

  def __init__(self, model_dir: str):
    self.directory = model_dir
    self.paths = shard_paths(model_dir)
    self.shards = [_open_shard(p) for p in self.paths]
    self.params = read_params(model_dir)
    self.heads = int(self.params['n_heads'])
    self.kv_heads = int(self.params.get('n_kv_heads') or self.heads)
    self.shapes = {name: self._shape(name) for name in self._hf_names()}

  def describe(self) -> str:
    return ', '.join(self.paths)

  @property
  def names(self):
    return self.shapes.keys()

  def _hf_names(self) -> List[str]:
    layers = {int(m[1]) for n in self.shards[0] if (m := re.match(r'layers\.(\d+)\.', n))}
    names = list(_TOP_TENSORS)
    for i in sorted(layers):
      names += [f'model.layers.{i}.{suffix}' for suffix in _LAYER_TENSORS]
      names += [f'model.layers.{i}.{prefix}{leaf}' for prefix in _QK_NORMS
                for leaf in ('weight', 'bias')
                if f'layers.{i}.{_QK_NORMS[prefix][0]}{leaf}' in self.shards[0]]
    return names

  def _shape(self, name: str) -> Tuple[int, ...]:
    source, axis, _ = self._source(name)
    shape = list(self.shards[0][source].shape)
    if axis is not None:
      shape[axis] *= len(self.shards)
    if self._qk_norm(name):  # [head_dim] per shard -> [heads, head_dim].
      shape = [self.heads if '.q_norm.' in name else self.kv_heads, shape[-1]]
    return tuple(shape)

  def _qk_norm(self, name: str) -> bool:
    return '.q_norm.' in name or '.k_norm.' in name

  def _source(self, name: str):
    """(Meta's name, the axis shards split or None, rotary heads kind or None)."""
    if name in _TOP_TENSORS:
      return _TOP_TENSORS[name] + (None,)
    layer, suffix = _LAYER.fullmatch(name).groups()
    if suffix in _LAYER_TENSORS:
      meta, axis, rotary = _LAYER_TENSORS[suffix]
      return f'layers.{layer}.{meta}', axis, rotary
    prefix, leaf = suffix.rsplit('.', 1)
    meta, kind = _QK_NORMS[prefix + '.']
    return f'layers.{layer}.{meta}{leaf}', None, kind

  def read(self, name: str) -> np.ndarray:
    """The tensor transformers' conversion would store under `name`."""
    source, axis, rotary = self._source(name)
    parts = [_numpy(shard[source]) for shard in self.shards]
    if self._qk_norm(name):
      return self._qk_norm_rows(parts, self.heads if rotary == 'q' else self.kv_heads)
    if axis is None:  # Replicated in every shard (norms): their mean, as transformers takes.
      return np.mean(np.stack(parts), axis=0).astype(np.float32)
    joined = np.concatenate(parts, axis=axis)
    if rotary:
      joined = _from_interleaved(joined, self.heads if rotary == 'q' else self.kv_heads)
    return joined

  def _qk_norm_rows(self, parts: List[np.ndarray], heads: int) -> np.ndarray:
    """Each shard's [head_dim] vector, in half-split order, repeated for its share of heads."""
    per_shard = heads // len(parts)
    rows = [p.reshape(-1, 2).T.reshape(1, -1).repeat(per_shard, axis=0) for p in parts]
    return np.concatenate(rows, axis=0)


def config_from_meta(files: MetaChameleonFiles, **overrides) -> DecoderConfig:
  """The DecoderConfig of params.json, with the sizes the tensors imply."""
  params = files.params
  vocab, dim = files.shapes['lm_head.weight']
  theta = float(params.get('rope_theta', 10000.0))
  hf = {'vocab_size': vocab, 'hidden_size': dim,
        'intermediate_size': files.shapes['model.layers.0.mlp.gate_proj.weight'][0],
        'num_hidden_layers': int(params['n_layers']), 'num_attention_heads': files.heads,
        'num_key_value_heads': files.kv_heads, 'rms_norm_eps': float(params['norm_eps']),
        'rope_parameters': {'rope_type': 'default', 'rope_theta': theta},
        'swin_norm': bool(params.get('swin_norm', False)),
        # transformers' conversion: 4,096 positions, 16,384 for the long-context rope base.
        'max_position_embeddings': 16384 if theta > 10000.0 else 4096,
        'qk_layernorm': any('.q_norm.' in n for n in files.names)}
  if dim % files.heads:
    raise UnsupportedConfigError(f'{files.directory}: dim {dim} is not divisible by n_heads '
                                 f'{files.heads}.')
  return hf_chameleon.config_from_hf(hf, **overrides)


def load_meta_chameleon(model_dir: str, config: Optional[DecoderConfig] = None, place=None,
                        **overrides):
  """(DecoderConfig, params) of a model folder of Meta's release (e.g. ``models/7b``).

  Args:
    model_dir: the folder holding consolidated*.pth and params.json.
    config: the DecoderConfig to load into; None derives it from params.json and the tensors.
    place: see ``mapping.load`` (each parameter put on its devices as soon as it is read).
    **overrides: DecoderConfig fields to change (dtype, param_dtype, scan_layers, ...).

  Raises:
    CheckpointMismatchError: a file holding pickled objects, or tensors that do not fit.
    FileNotFoundError: not a model folder of Meta's release.
  """
  files = MetaChameleonFiles(model_dir)
  config = config.replace(**overrides) if config else config_from_meta(files, **overrides)
  params, _ = mapping.load(files, hf_chameleon.RULES, config, place=place)
  return config, params


class ReleaseLayoutError(ValueError):
  """A folder that is not Meta's release as expected; the message names what is wrong."""


def release_folders(folder: str) -> Optional[Tuple[str, str]]:
  """(model folder, tokenizer folder) when `folder` is Meta's release holding one model, or one
  of its models/<size> folders; else None."""
  if os.path.isfile(os.path.join(folder, PARAMS_FILE)):
    return folder, os.path.normpath(os.path.join(folder, os.pardir, os.pardir, 'tokenizer'))
  models = os.path.join(folder, 'models')
  sizes = sorted(os.listdir(models)) if os.path.isdir(models) else []
  if not sizes:
    return None
  if len(sizes) > 1:
    raise ReleaseLayoutError(f'{folder} holds several models ({", ".join(sizes)}): give the one '
                             f'to load, e.g. {os.path.join(models, sizes[0])}.')
  return os.path.join(models, sizes[0]), os.path.join(folder, 'tokenizer')
