"""Reading PyTorch weight files (``.pth``, ``.ckpt``) without unpickling arbitrary objects."""

import pickle
import zipfile
from typing import Dict

import numpy as np

from cm3leon_jax.interop.errors import CheckpointMismatchError


def load_torch_state_dict(path: str) -> Dict[str, np.ndarray]:
  """The tensors of a PyTorch file as float32 numpy arrays, read with
  ``torch.load(weights_only=True)``; a Lightning checkpoint's 'state_dict' is unwrapped.

  Raises:
    FileNotFoundError: no file at `path`.
    CheckpointMismatchError: the file holds objects other than tensors (never unpickled), or is
      not a PyTorch file.
  """
  import torch  # Local import: only reading PyTorch files needs torch.

  with open(path, 'rb') as f:
    head = f.read(2)
  # torch.save writes a zip archive ('PK'); files of torch < 1.6 start with a pickle protocol mark.
  if not (zipfile.is_zipfile(path) or head[:1] == b'\x80'):
    raise CheckpointMismatchError(f'{path} is not a PyTorch weight file (neither a zip archive '
                                  'nor a legacy torch.save file).')
  try:
    checkpoint = torch.load(path, map_location='cpu', weights_only=True)
  except pickle.UnpicklingError as e:
    # Never fall back to full unpickling: it runs arbitrary code from the file.
    raise CheckpointMismatchError(
        f'{path} holds objects other than tensors, which torch.load(weights_only=True) '
        f'refuses; re-save just its state_dict from a trusted environment. ({e})') from e
  except RuntimeError as e:  # A damaged archive.
    raise CheckpointMismatchError(f'{path} is not a readable PyTorch weight file: {e}') from e
  if isinstance(checkpoint, dict) and isinstance(checkpoint.get('state_dict'), dict):
    checkpoint = checkpoint['state_dict']
  if not isinstance(checkpoint, dict):
    raise CheckpointMismatchError(f'{path} holds a {type(checkpoint).__name__}, not a state dict.')
  return {name: value.float().numpy() for name, value in checkpoint.items()
          if isinstance(value, torch.Tensor)}
