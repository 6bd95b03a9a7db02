"""Checkpoints of a training run: orbax, async, with the data iterator's state beside the state.

``<model_dir>/checkpoints/<step>/state``   the TrainState (orbax, sharded arrays written collectively)
``<model_dir>/checkpoints/<step>/data``    each process's tf.data iterator (tf.train.Checkpoint)

Saving the iterator makes a resumed run see exactly the batches it would have seen. Orbax only
lists finalised steps, so a save interrupted by a kill never counts; a step that is listed but
cannot be read (a file damaged later) is reported and the previous one is used.
``load_params`` reads only the parameters of another run's checkpoint (fine-tuning from
INITIAL_CHECKPOINT_PATH without its optimizer state).
"""

import dataclasses
import os
import pathlib
import signal
import threading
from typing import Any, Optional

from absl import logging
import jax
import orbax.checkpoint as ocp
import tensorflow as tf

STATE, DATA = 'state', 'data'


class CheckpointShapeError(ValueError):
  """A checkpoint written by another model shape; the message names the first mismatch."""


def saved_param_shapes(state_dir: str) -> dict:
  """{'/'-joined parameter path: shape} of a saved train state (or params) folder."""
  # The handler reads the item's own tree metadata (<state_dir>/_METADATA). A Checkpointer's
  # metadata() would also look for the step's _CHECKPOINT_METADATA, which the CheckpointManager
  # writes one level up (<step>/), and warn "Metadata file does not exist" for every item folder.
  handler = ocp.PyTreeCheckpointHandler()
  try:
    metadata = handler.metadata(pathlib.Path(state_dir)).tree
  finally:
    handler.close()
  tree = metadata.get('params', metadata)
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {_path(p): tuple(leaf.shape) for p, leaf in flat}


def _path(key_path) -> str:
  return '/'.join(str(getattr(k, 'key', getattr(k, 'idx', k))) for k in key_path)


def check_param_shapes(state_dir: str, abstract_params, saved: Optional[dict] = None) -> None:
  """Raise CheckpointShapeError unless `state_dir` holds exactly `abstract_params`' shapes.

  `saved`: its saved_param_shapes, when the caller has already read them.
  """
  saved = saved_param_shapes(state_dir) if saved is None else saved
  wanted = {_path(p): tuple(leaf.shape)
            for p, leaf in jax.tree_util.tree_flatten_with_path(abstract_params)[0]}
  for name in sorted(set(saved) | set(wanted)):
    if saved.get(name) != wanted.get(name):
      raise CheckpointShapeError(
          f'Checkpoint {state_dir} was written by another model: parameter {name} is '
          f'{saved.get(name, "absent")} there but {wanted.get(name, "absent")} in this '
          'config. Use the config it was trained with, or another MODEL_DIR.')


class IteratorHandler(ocp.CheckpointHandler):
  """Saves and restores a tf.data iterator per process (each host reads its own shard)."""

  def _prefix(self, directory) -> str:
    return os.path.join(os.fspath(directory), f'iterator-{jax.process_index()}')

  def save(self, directory, args: 'IteratorArgs'):
    tf.train.Checkpoint(iterator=args.iterator).write(self._prefix(directory))

  def restore(self, directory, args: 'IteratorArgs'):
    tf.train.Checkpoint(iterator=args.iterator).read(self._prefix(directory)).assert_consumed()
    return args.iterator


@ocp.args.register_with_handler(IteratorHandler, for_save=True, for_restore=True)
@dataclasses.dataclass
class IteratorArgs(ocp.args.CheckpointArgs):
  """The tf.data iterator to save, or to restore into."""

  iterator: Any


class Checkpointer:
  """Saves every `save_every` steps (and on demand), keeps the last `keep`, restores the newest
  good one."""

  def __init__(self, model_dir: str, save_every: int, keep: Optional[int] = 3,
               use_async: bool = True):
    self.directory = os.path.join(os.path.abspath(model_dir), 'checkpoints')
    options = ocp.CheckpointManagerOptions(save_interval_steps=save_every, max_to_keep=keep,
                                           enable_async_checkpointing=use_async, create=True)
    self._manager = ocp.CheckpointManager(self.directory, options=options,
                                          item_names=(STATE, DATA))

  def save(self, step: int, state, iterator, force: bool = False) -> bool:
    """Start saving `state` and `iterator` as `step` when due (or when forced)."""
    args = ocp.args.Composite(**{STATE: ocp.args.StandardSave(state),
                                 DATA: IteratorArgs(iterator)})
    return self._manager.save(step, args=args, force=force)

  def should_save(self, step: int) -> bool:
    """Whether `step` is on the save interval."""
    return self._manager.should_save(step)

  def all_steps(self):
    return sorted(self._manager.all_steps())

  def restore_latest(self, abstract_state, iterator):
    """(state, step) of the newest readable checkpoint, or (None, None) when there is none.

    `abstract_state` holds jax.ShapeDtypeStructs with shardings: arrays come back in that layout.
    """
    for step in reversed(self.all_steps()):
      self._check_shapes(step, abstract_state.params)
      args = ocp.args.Composite(**{STATE: ocp.args.StandardRestore(abstract_state),
                                   DATA: IteratorArgs(iterator)})
      try:
        restored = self._manager.restore(step, args=args)
      except Exception as e:  # pylint: disable=broad-except
        # Orbax and TensorFlow raise many types on damaged files; any of them means "not this one".
        logging.error('Checkpoint %s/%d cannot be restored (%s: %s); trying the previous one.',
                      self.directory, step, type(e).__name__, e)
        continue
      logging.info('Restored checkpoint %s/%d.', self.directory, step)
      return restored[STATE], step
    return None, None

  def _check_shapes(self, step: int, abstract_params) -> None:
    """Another model's checkpoint is an error, not a damaged step to skip (that would start
    the run over and then overwrite it)."""
    state_dir = os.path.join(self.directory, str(step), STATE)
    try:
      saved = saved_param_shapes(state_dir)
    except Exception:  # pylint: disable=broad-except  (unreadable: restore reports and skips it)
      return
    check_param_shapes(state_dir, abstract_params, saved)

  def wait(self):
    """Block until the last async save is on disk."""
    self._manager.wait_until_finished()

  def close(self):
    self._manager.wait_until_finished()
    self._manager.close()


def load_params(path: str, abstract_params):
  """The parameters of a checkpoint: a run's model dir, its checkpoints/ dir, or one step's dir.

  Raises:
    FileNotFoundError: nothing restorable at `path`.
  """
  path = os.path.abspath(path)
  candidates = [os.path.join(path, STATE), path]
  for folder in (path, os.path.join(path, 'checkpoints')):
    if os.path.isdir(folder):
      steps = sorted((int(s) for s in os.listdir(folder) if s.isdigit()), reverse=True)
      candidates += [os.path.join(folder, str(s), STATE) for s in steps[:1]]
  for candidate in candidates:
    if os.path.isdir(candidate) and os.path.exists(os.path.join(candidate, '_METADATA')):
      check_param_shapes(candidate, abstract_params)
      target = {'params': abstract_params}
      args = ocp.args.PyTreeRestore(
          item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
          partial_restore=True)  # The optimizer state stays on disk.
      return ocp.PyTreeCheckpointer().restore(candidate, args=args)['params']
  raise FileNotFoundError(f'No checkpoint with a train state under {path} (looked for '
                          f'<run>/checkpoints/<step>/{STATE}).')


class PreemptionFlag:
  """Set by SIGTERM (a pre-empted VM gets one): the loop then saves and exits cleanly."""

  def __init__(self):
    self._event = threading.Event()
    self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del signum, frame
    logging.warning('SIGTERM received: saving a checkpoint and stopping.')
    self._event.set()

  def is_set(self) -> bool:
    return self._event.is_set()

  def restore_handler(self):
    signal.signal(signal.SIGTERM, self._previous)
