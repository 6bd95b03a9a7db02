"""pytorch-fid's Inception weights (``pt_inception-2015-12-05-6726825d.pth``) -> the variables of
``models.inception.FIDInceptionV3``.

The file is read with ``torch.load(weights_only=True)`` (torch is needed for this path only);
``convert_to_safetensors`` writes the same tensors, under the same names, as a safetensors file
that later runs read without torch. Where the file is found: an explicit path (a tool's
``--inception`` flag), else $CM3LEON_FID_INCEPTION, else PyTorch's hub cache, where pytorch-fid
keeps the download.
"""

import os
from typing import Dict, Mapping, Optional, Tuple

import jax
import numpy as np
from flax import traverse_util
from safetensors import safe_open
from safetensors.numpy import save_file

from cm3leon_jax.interop.errors import CheckpointMismatchError
from cm3leon_jax.interop.torch_files import load_torch_state_dict
from cm3leon_jax.models.inception import FIDInceptionV3

WEIGHTS_FILE = 'pt_inception-2015-12-05-6726825d.pth'
WEIGHTS_URL = ('https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/'
               + WEIGHTS_FILE)
ENV_VAR = 'CM3LEON_FID_INCEPTION'
NUM_CLASSES = 1008  # The 2015 TF graph's classifier (1000 ImageNet classes and 8 unused).

# (collection, leaf) -> the torch suffix of that variable.
_LEAF_NAMES = {('params', 'kernel'): 'weight', ('params', 'scale'): 'weight',
               ('params', 'bias'): 'bias', ('batch_stats', 'mean'): 'running_mean',
               ('batch_stats', 'var'): 'running_var'}
# Tensors of the file that no variable takes: the classifier (FID reads the pool features) and
# BatchNorm's step counters.
_CLASSIFIER_SHAPES = {'fc.weight': (NUM_CLASSES, 2048), 'fc.bias': (NUM_CLASSES,)}
_COUNTER_SUFFIX = '.num_batches_tracked'


class InceptionWeightsNotFoundError(FileNotFoundError):
  """No Inception weight file where the user pointed, nor in the places searched."""


def hub_cache_path() -> str:
  """Where pytorch-fid's download lands: $TORCH_HOME/hub/checkpoints (torch's default)."""
  torch_home = os.environ.get('TORCH_HOME') or os.path.join(
      os.environ.get('XDG_CACHE_HOME', os.path.expanduser('~/.cache')), 'torch')
  return os.path.join(torch_home, 'hub', 'checkpoints', WEIGHTS_FILE)


def find_weights(path: Optional[str] = None) -> str:
  """The Inception weight file to use: `path`, else $CM3LEON_FID_INCEPTION, else the hub cache.

  Raises:
    InceptionWeightsNotFoundError: naming the file FID needs and where pytorch-fid users get it.
  """
  given = path or os.environ.get(ENV_VAR)
  if given:
    given = os.path.expanduser(given)
    if not os.path.isfile(given):
      raise InceptionWeightsNotFoundError(
          f'FID Inception weights not found at {given}. ' + _where_to_get_them())
    return given
  cached = hub_cache_path()
  if os.path.isfile(cached):
    return cached
  raise InceptionWeightsNotFoundError('FID needs InceptionV3 weights and none were given. '
                                      + _where_to_get_them())


def _where_to_get_them() -> str:
  return (f'FID uses pytorch-fid\'s {WEIGHTS_FILE} ({WEIGHTS_URL}; pytorch-fid downloads it to '
          f'{hub_cache_path()} on first use). Pass its path with --inception or ${ENV_VAR}; a '
          '.safetensors file written by `cm3leon-convert-inception` works the same way without '
          'torch.')


def torch_name(collection: str, path: Tuple[str, ...]) -> str:
  """The pytorch-fid state-dict key of our variable `collection`/`path`."""
  return '.'.join(path[:-1] + (_LEAF_NAMES[(collection, path[-1])],))


def to_torch_shape(shape: Tuple[int, ...], leaf: str) -> Tuple[int, ...]:
  """The torch shape of our variable of `shape` (conv kernels: ours HWIO, torch's OIHW)."""
  return (shape[3], shape[2], shape[0], shape[1]) if leaf == 'kernel' else tuple(shape)


def _to_ours(value: np.ndarray, leaf: str) -> np.ndarray:
  return np.transpose(value, (2, 3, 1, 0)) if leaf == 'kernel' else value


def expected_variables() -> Dict[Tuple[str, Tuple[str, ...]], Tuple[int, ...]]:
  """(collection, path) -> shape of every variable of FIDInceptionV3 (nothing allocated)."""
  shapes = jax.eval_shape(lambda: FIDInceptionV3().init(
      jax.random.key(0), np.zeros((1, 299, 299, 3), np.float32)))
  return {(collection, path): tuple(x.shape) for collection in ('params', 'batch_stats')
          for path, x in traverse_util.flatten_dict(shapes[collection]).items()}


def variables_from_state_dict(state_dict: Mapping[str, np.ndarray], source: str = 'state dict'):
  """{'params', 'batch_stats'} of FIDInceptionV3 from pytorch-fid's tensors.

  Raises:
    CheckpointMismatchError: one message naming every missing, misshapen or unexpected tensor
      (a misshapen one by its layer, with both shapes).
  """
  problems, flat = [], {}
  for (collection, path), shape in expected_variables().items():
    name, want = torch_name(collection, path), to_torch_shape(shape, path[-1])
    if name not in state_dict:
      problems.append(f'missing {name} (expected shape {want})')
    elif tuple(state_dict[name].shape) != want:
      problems.append(f'layer {name}: expected shape {want}, found {tuple(state_dict[name].shape)}')
    else:
      flat[(collection,) + path] = _to_ours(np.asarray(state_dict[name], np.float32), path[-1])
  for name, want in _CLASSIFIER_SHAPES.items():
    if name in state_dict and tuple(state_dict[name].shape) != want:
      problems.append(f'layer {name}: expected shape {want} (the FID Inception\'s {NUM_CLASSES} '
                      f'classes), found {tuple(state_dict[name].shape)}')
  known = {torch_name(c, p) for c, p in expected_variables()} | set(_CLASSIFIER_SHAPES)
  unexpected = sorted(n for n in state_dict if n not in known and not n.endswith(_COUNTER_SUFFIX))
  problems += [f'unexpected {name}' for name in unexpected]
  if problems:
    raise CheckpointMismatchError(
        f'{source} is not pytorch-fid\'s FID Inception ({WEIGHTS_FILE}):\n  '
        + '\n  '.join(problems))
  return traverse_util.unflatten_dict(flat)


def read_tensors(path: str) -> Dict[str, np.ndarray]:
  """Every tensor of a .pth (torch, weights only) or .safetensors file, as float32 numpy."""
  if path.endswith('.safetensors'):
    with safe_open(path, framework='numpy') as f:
      return {name: f.get_tensor(name).astype(np.float32) for name in f.keys()}
  return load_torch_state_dict(path)


def load_fid_inception(path: Optional[str] = None):
  """The variables of FIDInceptionV3, from `path` or the places ``find_weights`` searches."""
  path = find_weights(path)
  return variables_from_state_dict(read_tensors(path), source=path)


def convert_to_safetensors(pth_path: str, output_path: str) -> None:
  """Write pytorch-fid's weights as safetensors (same tensor names), checked first, so that
  later runs load them without torch."""
  tensors = read_tensors(pth_path)
  variables_from_state_dict(tensors, source=pth_path)
  os.makedirs(os.path.dirname(os.path.abspath(output_path)), exist_ok=True)
  save_file({name: np.ascontiguousarray(x) for name, x in tensors.items()}, output_path)


def random_state_dict(seed: int = 0) -> Dict[str, np.ndarray]:
  """Every tensor of pytorch-fid's file, random: He-normal kernels, identity BatchNorm, a zero
  classifier. For benchmarks and tests, where the real weights cannot be downloaded."""
  rng = np.random.default_rng(seed)
  tensors = {}
  for (collection, path), shape in expected_variables().items():
    name, leaf = torch_name(collection, path), path[-1]
    torch_shape = to_torch_shape(shape, leaf)
    if leaf == 'kernel':
      tensors[name] = rng.normal(0, np.sqrt(2 / np.prod(torch_shape[1:])), torch_shape)
    else:
      tensors[name] = np.ones(torch_shape) if leaf in ('scale', 'var') else np.zeros(torch_shape)
    if leaf == 'mean':
      tensors[name.replace('running_mean', 'num_batches_tracked')] = np.zeros((), np.int64)
  tensors.update({name: np.zeros(shape) for name, shape in _CLASSIFIER_SHAPES.items()})
  return {name: x.astype(np.float32) if x.dtype == np.float64 else x
          for name, x in tensors.items()}


def save_as_pth(tensors: Mapping[str, np.ndarray], path: str) -> None:
  """Write tensors as pytorch-fid's file format (a torch.save'd state dict)."""
  import torch  # pylint: disable=g-import-not-at-top

  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  torch.save({name: torch.from_numpy(np.asarray(x)) for name, x in tensors.items()}, path)
