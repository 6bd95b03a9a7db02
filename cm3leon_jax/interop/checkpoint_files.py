"""Reading and writing a transformers-style checkpoint directory.

A directory holds config.json and either model.safetensors or shards listed by
model.safetensors.index.json. Tensors are read one at a time as numpy arrays (bfloat16 through
ml_dtypes), so a large checkpoint never sits in memory twice.
"""

import json
import os
from typing import Any, Dict, Tuple

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

CONFIG = 'config.json'
SINGLE = 'model.safetensors'
INDEX = 'model.safetensors.index.json'


def read_config(directory: str) -> Dict[str, Any]:
  """The directory's config.json as a dict."""
  with open(os.path.join(directory, CONFIG)) as f:
    return json.load(f)


class CheckpointFiles:
  """Names, shapes and data of the tensors of one checkpoint directory."""

  def __init__(self, directory: str):
    self.directory = directory
    self.file_of = self._file_of_each_tensor()
    self.shapes: Dict[str, Tuple[int, ...]] = {}
    for filename in sorted(set(self.file_of.values())):
      with safe_open(os.path.join(directory, filename), framework='numpy') as f:
        for name in f.keys():
          self.shapes[name] = tuple(f.get_slice(name).get_shape())

  def _file_of_each_tensor(self) -> Dict[str, str]:
    index = os.path.join(self.directory, INDEX)
    if os.path.exists(index):
      with open(index) as f:
        return dict(json.load(f)['weight_map'])
    if not os.path.exists(os.path.join(self.directory, SINGLE)):
      raise FileNotFoundError(f'{self.directory} has neither {SINGLE} nor {INDEX}.')
    with safe_open(os.path.join(self.directory, SINGLE), framework='numpy') as f:
      return {name: SINGLE for name in f.keys()}

  @property
  def names(self):
    """Every tensor name in the checkpoint."""
    return self.shapes.keys()

  def describe(self) -> str:
    """The file a reader should look in: the single file or the shard index."""
    single = os.path.join(self.directory, SINGLE)
    return single if os.path.exists(single) else os.path.join(self.directory, INDEX)

  def read(self, name: str) -> np.ndarray:
    """One tensor as a numpy array."""
    with safe_open(os.path.join(self.directory, self.file_of[name]), framework='numpy') as f:
      return f.get_tensor(name)


def write_checkpoint(directory: str, config_json: Dict[str, Any],
                     tensors: Dict[str, np.ndarray]) -> None:
  """Write config.json and one model.safetensors (metadata format 'pt', as transformers wants)."""
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, CONFIG), 'w') as f:
    json.dump(config_json, f, indent=2, sort_keys=True)
  tensors = {name: np.ascontiguousarray(x) for name, x in tensors.items()}
  save_file(tensors, os.path.join(directory, SINGLE), metadata={'format': 'pt'})
