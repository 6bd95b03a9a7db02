"""Loading taming-transformers VQ-GAN weights (Make-A-Scene, Chameleon's tokenizer) into ``VQGAN``.

Meta's Chameleon release ships its tokenizer as such a checkpoint (``vqgan.ckpt``) plus taming's
YAML config (``vqgan.yaml``); ``meta_tokenizer.load_meta_tokenizer`` reads the pair.

One naming rule drives the conversion: our parameter path with each list index '_i' written as
'.i' (except the literal 'mid.block_1', 'mid.attn_1', 'mid.block_2'), and leaf 'kernel' / 'scale'
/ 'embedding' written as taming's 'weight' / 'weight' / 'embedding.weight'. Conv kernels change
layout from torch's OIHW to Flax's HWIO; everything else is copied as is.
"""

import re
from typing import Dict, Mapping, Tuple

import numpy as np
from absl import logging
from flax import traverse_util

from cm3leon_jax.interop.errors import CheckpointMismatchError
from cm3leon_jax.interop.torch_files import load_torch_state_dict
from cm3leon_jax.models.vqgan import abstract_params
from cm3leon_jax.models.vqgan_config import VQGANConfig

# The Lightning module also saves its GAN loss (discriminator, LPIPS) under this prefix.
LOSS_PREFIX = 'loss.'
_LIST_PART = re.compile(r'(down|up|block|attn)_(\d+)')
_LEAF_NAMES = {'kernel': 'weight', 'scale': 'weight', 'bias': 'bias',
               'embedding': 'embedding.weight'}


def torch_name(path: Tuple[str, ...]) -> str:
  """The taming state-dict key of our parameter at `path` (e.g. ('encoder', 'down_0', ...))."""
  parts = []
  for parent, part in zip(('',) + path[:-1], path[:-1]):
    match = _LIST_PART.fullmatch(part)
    # Inside 'mid', block_1/attn_1/block_2 are attribute names in taming, not list indices.
    parts.append(f'{match[1]}.{match[2]}' if match and parent != 'mid' else part)
  return '.'.join(parts + [_LEAF_NAMES[path[-1]]])


def _to_ours(value: np.ndarray, leaf: str) -> np.ndarray:
  # torch Conv2d weights are (out, in, kh, kw); Flax's are (kh, kw, in, out).
  return np.transpose(value, (2, 3, 1, 0)) if leaf == 'kernel' else value


def _torch_shape(shape: Tuple[int, ...], leaf: str) -> Tuple[int, ...]:
  return (shape[3], shape[2], shape[0], shape[1]) if leaf == 'kernel' else tuple(shape)


def params_from_torch_state_dict(state_dict: Mapping[str, np.ndarray], config: VQGANConfig,
                                 without: Tuple[str, ...] = ()):
  """Our VQGAN parameter tree (for ``{'params': ...}``) from a taming VQModel state dict.

  Args:
    state_dict: taming key -> array (numpy, or anything np.asarray accepts), without 'loss.*'.
    config: the VQGANConfig that the checkpoint was trained with.
    without: top-level submodules (e.g. 'decoder') that the state dict does not have and the
      returned tree leaves out.

  Raises:
    CheckpointMismatchError: one message listing every missing, misshapen or unexpected tensor,
      each by its taming key (misshapen ones with the expected and the found torch shapes).
  """
  expected = {path: spec for path, spec in
              traverse_util.flatten_dict(abstract_params(config)).items()
              if path[0] not in without}
  problems, flat = [], {}
  for path, spec in expected.items():
    name, want = torch_name(path), _torch_shape(spec.shape, path[-1])
    if name not in state_dict:
      problems.append(f'missing {name} (ours: {"/".join(path)}, expected shape {want})')
      continue
    value = np.asarray(state_dict[name], dtype=np.float32)
    if tuple(value.shape) != want:
      problems.append(f'misshapen {name}: expected {want}, found {tuple(value.shape)}')
      continue
    flat[path] = _to_ours(value, path[-1])
  known = {torch_name(path) for path in expected}
  problems += [f'unexpected {name}' for name in sorted(set(state_dict) - known)]
  if problems:
    raise CheckpointMismatchError(
        f'The taming state dict does not match {config}:\n  ' + '\n  '.join(problems))
  return traverse_util.unflatten_dict(flat)


def torch_state_dict(params, config: VQGANConfig,
                     without: Tuple[str, ...] = ()) -> Dict[str, np.ndarray]:
  """Our VQGAN parameters as a taming VQModel state dict (the inverse of
  ``params_from_torch_state_dict``): taming key -> float32 numpy array in torch's layout.

  `without` leaves out top-level submodules, e.g. ('decoder',) for the encoder half that
  transformers' ChameleonVQVAE holds.
  """
  flat = traverse_util.flatten_dict(params)
  expected = traverse_util.flatten_dict(abstract_params(config))
  if set(flat) != set(expected):
    raise CheckpointMismatchError(f'These parameters are not those of {config}.')
  return {torch_name(path): _to_torch(np.asarray(value, np.float32), path[-1])
          for path, value in flat.items() if path[0] not in without}


def _to_torch(value: np.ndarray, leaf: str) -> np.ndarray:
  return np.ascontiguousarray(np.transpose(value, (3, 2, 0, 1))) if leaf == 'kernel' else value


def load_taming_checkpoint(ckpt_path: str) -> Dict[str, np.ndarray]:
  """The VQModel tensors (as float32 numpy) of a taming Lightning `.ckpt`, without 'loss.*'."""
  state_dict = load_torch_state_dict(ckpt_path)
  kept = {name: value for name, value in state_dict.items() if not name.startswith(LOSS_PREFIX)}
  logging.info('Read %d VQ-GAN tensors from %s; ignored %d GAN-loss tensors (%s*).', len(kept),
               ckpt_path, len(state_dict) - len(kept), LOSS_PREFIX)
  return kept
