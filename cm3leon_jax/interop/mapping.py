"""The machinery behind each checkpoint format's single conversion table.

A format (``hf_chameleon``, ``hf_opt``) is a tuple of ``Rule``s: HF tensor name, our parameter
path, transform. ``plan`` expands the rules for one config into ``Entry``s; ``load`` and ``save``
both walk those entries, so the two directions cannot drift apart.
"""

import dataclasses
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from cm3leon_jax.interop import transforms
from cm3leon_jax.interop.checkpoint_files import CheckpointFiles, write_checkpoint
from cm3leon_jax.interop.errors import CheckpointMismatchError
from cm3leon_jax.interop.layers_tree import stack_layers, unstack_layers
from cm3leon_jax.models.config import DecoderConfig
from cm3leon_jax.models.decoder import Decoder, init_params

# HF models keep the transformer under `model.`; a bare base model saves its names without it.
OPTIONAL_PREFIX = 'model.'
_MAX_LISTED = 20  # Extra tensors listed in an error before "... and N more".


@dataclasses.dataclass(frozen=True)
class Rule:
  """One row of a conversion table.

  Attributes:
    hf: the HF tensor name; '{i}' stands for the layer index.
    ours: our parameter path, '/'-separated, unscanned layout ('layers_{i}/...').
    transform: see ``transforms``.
    tied_to: the HF tensor read instead when the checkpoint ties its embeddings.
  """

  hf: str
  ours: str
  transform: Any = transforms.Identity()
  tied_to: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class Entry:
  """A rule instantiated for one layer of one config, with our expected shape."""

  hf: str
  ours: str
  transform: Any
  shape: Tuple[int, ...]

  @property
  def hf_shape(self) -> Tuple[int, ...]:
    return self.transform.hf_shape(self.shape)


def expected_shapes(config: DecoderConfig) -> Dict[str, Tuple[int, ...]]:
  """Our parameter shapes in the unscanned layout, by '/'-joined path (no arrays are allocated)."""
  model = Decoder(config.replace(scan_layers=False))
  boxed = jax.eval_shape(lambda rng: init_params(model, rng, 1, 1), jax.random.key(0))
  flat = traverse_util.flatten_dict(nn.meta.unbox(boxed), sep='/')
  return {path: tuple(x.shape) for path, x in flat.items()}


def plan(rules: Sequence[Rule], config: DecoderConfig, tied: bool = False) -> List[Entry]:
  """The rules expanded over layers, keeping those whose parameter this config has."""
  shapes = expected_shapes(config)
  entries = []
  for rule in rules:
    for i in range(config.num_layers) if '{i}' in rule.ours else [None]:
      ours = rule.ours.format(i=i)
      if ours in shapes:
        hf = rule.tied_to if tied and rule.tied_to else rule.hf
        entries.append(Entry(hf.format(i=i), ours, rule.transform, shapes[ours]))
  uncovered = sorted(set(shapes) - {e.ours for e in entries})
  if uncovered:  # A gap in the table, not in the checkpoint.
    raise RuntimeError(f'The conversion table has no rule for {uncovered}.')
  return entries


def load(source, rules: Sequence[Rule], config: DecoderConfig, tied: bool = False,
         ignore: Callable[[str], bool] = lambda name: False,
         place: Optional[Callable[[str, np.ndarray], Any]] = None):
  """Our parameters from a checkpoint directory, and the names of the tensors it ignored.

  `source` is a directory, or an object with CheckpointFiles' interface (``names``, ``shapes``,
  ``read``, ``describe``, ``directory``) presenting another layout under transformers' names.
  Every name and shape is checked before any tensor is read. Parameters are numpy arrays of
  config.param_dtype in the layout of config.scan_layers. Tensors for which `ignore` is true,
  and the HF copies of tied weights, are skipped. `place(path, array)`, when given, receives each
  converted parameter as soon as it is read (our '/'-joined path) and returns what to keep, e.g.
  the array put on its devices: the host then holds one tensor at a time (unscanned layout only).
  """
  entries = plan(rules, config, tied)
  files = CheckpointFiles(source) if isinstance(source, str) else source
  tied_copies = {r.hf for r in rules if tied and r.tied_to}
  ignored = sorted(n for n in files.names
                   if ignore(n) or n in tied_copies or OPTIONAL_PREFIX + n in tied_copies)
  sources = _match(entries, files, set(ignored))
  if place is not None and config.scan_layers:
    raise ValueError('Placing tensors as they are read needs the unscanned layout '
                     '(scan_layers=False).')
  dtype = config.jnp_param_dtype
  keep = place or (lambda path, x: x)
  # One tensor at a time: astype copies, so no file stays mapped.
  flat = {e.ours: keep(e.ours, e.transform.to_ours(files.read(sources[e.hf]), e.shape)
                       .astype(dtype)) for e in entries}
  params = traverse_util.unflatten_dict(flat, sep='/')
  return (stack_layers(params) if config.scan_layers else params), ignored


def _match(entries: List[Entry], files: CheckpointFiles, ignored) -> Dict[str, str]:
  """The checkpoint name of each entry's tensor; raises one error listing every mismatch."""
  problems, sources = [], {}
  for e in entries:
    found = next((n for n in (e.hf, e.hf.removeprefix(OPTIONAL_PREFIX)) if n in files.shapes), None)
    if found is None:
      problems.append(f'missing tensor {e.hf!r} (for {e.ours}) in {files.describe()}')
    elif files.shapes[found] != e.hf_shape:
      problems.append(f'{found!r} (for {e.ours}): expected shape {e.hf_shape}, '
                      f'found {files.shapes[found]}')
    if found is not None:
      sources[e.hf] = found
  used = set(sources.values())
  extra = sorted(n for n in files.names if n not in used and n not in ignored)
  if extra:
    listed = ', '.join(map(repr, extra[:_MAX_LISTED]))
    more = f' and {len(extra) - _MAX_LISTED} more' if len(extra) > _MAX_LISTED else ''
    problems.append(f'unexpected tensors that no parameter of this config takes: {listed}{more}')
  if problems:
    raise CheckpointMismatchError(
        f'Checkpoint {files.directory} does not match the config:\n  ' + '\n  '.join(problems))
  return sources


def save(directory: str, rules: Sequence[Rule], config: DecoderConfig, params,
         config_json: Dict[str, Any], dtype=None,
         extra_tensors: Optional[Dict[str, np.ndarray]] = None) -> None:
  """Write `params` (boxed or not, either layout) and `config_json` as a checkpoint directory.

  Tensors are cast to `dtype` if given; config.json records their dtype. `extra_tensors` (HF
  names, e.g. a VQ-VAE's) are written beside them, cast the same way.
  """
  entries = plan(rules, config)
  flat = traverse_util.flatten_dict(
      unstack_layers(nn.meta.unbox(params), config.num_layers), sep='/')
  _check_params(entries, flat)
  tensors = {}
  for e in entries:
    x = np.asarray(flat[e.ours])
    tensors[e.hf] = e.transform.to_hf(x.astype(jnp.dtype(dtype)) if dtype else x)
  for name, x in (extra_tensors or {}).items():
    tensors[name] = np.asarray(x).astype(jnp.dtype(dtype)) if dtype else np.asarray(x)
  dtypes = {str(x.dtype) for x in tensors.values()}
  if len(dtypes) == 1:  # transformers loads in this dtype unless told otherwise.
    config_json = {**config_json, 'dtype': dtypes.pop()}
  write_checkpoint(directory, config_json, tensors)


def _check_params(entries: List[Entry], flat: Dict[str, Any]) -> None:
  """Params that do not fit the config raise one error naming every offending path."""
  problems = [f'missing parameter {e.ours} (for {e.hf!r})' for e in entries if e.ours not in flat]
  problems += [f'{e.ours} (for {e.hf!r}): expected shape {e.shape}, found {np.shape(flat[e.ours])}'
               for e in entries if e.ours in flat and np.shape(flat[e.ours]) != e.shape]
  extra = sorted(set(flat) - {e.ours for e in entries})
  if extra:
    problems.append(f'parameters this config does not have: {extra}')
  if problems:
    raise CheckpointMismatchError('Parameters do not match the config:\n  ' + '\n  '.join(problems))
