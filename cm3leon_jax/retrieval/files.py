"""An index folder as the retrieval stages write it, beside the memory bank's store::

  <index_dir>/index.json, ids.json, searcher/   the MemoryIndex (see index.py)
  <index_dir>/bank.npz                          per row: content fingerprint, has both modalities
  <index_dir>/retrieval_index.json              the bank's store, the CLIP folder, the method

ScaNN reads and writes local files only, so a remote index_dir (gs://...) is written through a
local temporary folder and copied, and copied to a local temporary folder to be loaded.
"""

import json
import os
import tempfile
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from cm3leon_jax.retrieval.index import MemoryIndex, RetrievalError
from cm3leon_jax.tokenizers.document_encoder import EncoderInfo

METADATA = 'retrieval_index.json'
BANK = 'bank.npz'


class BankTable:
  """What selection needs to know of each memory-bank document, by row or by id."""

  def __init__(self, fingerprints: Sequence[int], has_both: Sequence[bool],
               ids: Optional[Sequence[str]] = None):
    self.fingerprints = np.asarray(fingerprints, np.int64)
    self.both = np.asarray(has_both, bool)
    self._rows = {doc: row for row, doc in enumerate(ids)} if ids is not None else {}

  def fingerprint(self, document_id: str) -> Optional[int]:
    row = self._rows.get(document_id)
    return None if row is None else int(self.fingerprints[row])

  def has_both(self, document_id: str) -> bool:
    row = self._rows.get(document_id)
    return row is not None and bool(self.both[row])


def _is_local(path: str) -> bool:
  return '://' not in path


def _copy_tree(source: str, destination: str) -> None:
  for directory, _, names in tf.io.gfile.walk(source):
    target = os.path.join(destination, os.path.relpath(directory, source))
    tf.io.gfile.makedirs(target)
    for name in names:
      tf.io.gfile.copy(os.path.join(directory, name), os.path.join(target, name), overwrite=True)


def save_index(index_dir: str, index: MemoryIndex, bank: BankTable,
               metadata: Dict[str, Any]) -> None:
  """Write the index, the bank table and the metadata into `index_dir` (local or remote)."""
  local = index_dir if _is_local(index_dir) else tempfile.mkdtemp(prefix='cm3leon_index_')
  os.makedirs(local, exist_ok=True)
  index.save(local)
  np.savez(os.path.join(local, BANK), fingerprints=bank.fingerprints, has_both=bank.both)
  with open(os.path.join(local, METADATA), 'w', encoding='utf-8') as f:
    json.dump(metadata, f, indent=2, sort_keys=True)
  if local != index_dir:
    _copy_tree(local, index_dir)


def read_metadata(index_dir: str) -> Dict[str, Any]:
  """The index folder's retrieval_index.json; RetrievalError if it is not an index folder."""
  path = os.path.join(index_dir, METADATA)
  if not tf.io.gfile.exists(path):
    raise RetrievalError(f'{index_dir!r} is not a retrieval index folder (no {METADATA}); build '
                         'one with tools/build_index.py.')
  with tf.io.gfile.GFile(path) as f:
    return json.load(f)


def load_index(index_dir: str,
               expected_encoder: Optional[EncoderInfo] = None) -> Tuple[MemoryIndex, BankTable]:
  """The MemoryIndex and BankTable of an index folder (checked against `expected_encoder`)."""
  read_metadata(index_dir)
  local = index_dir
  if not _is_local(index_dir):
    local = tempfile.mkdtemp(prefix='cm3leon_index_')
    _copy_tree(index_dir, local)
  index = MemoryIndex.load(local, expected_encoder)
  with np.load(os.path.join(local, BANK)) as bank:
    table = BankTable(bank['fingerprints'], bank['has_both'], index.ids)
  if len(table.fingerprints) != len(index):
    raise RetrievalError(f'{index_dir}: {BANK} has {len(table.fingerprints)} rows but the index '
                         f'{len(index)}; rebuild the index.')
  return index, table
