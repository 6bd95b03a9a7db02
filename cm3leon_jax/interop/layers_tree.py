"""Converting parameters between the scanned layout (`layers`, leading layer axis) and the
unscanned one (`layers_0`, `layers_1`, ...), so conversions work for either `scan_layers`."""

import re
from typing import Any, Dict, Optional

import jax
import jax.numpy as jnp
import numpy as np

_LAYER_KEY = re.compile(r'^layers_(\d+)$')


def _xp(leaves):
  """numpy for host arrays (checkpoint conversion stays on the host), jax.numpy otherwise."""
  return np if all(isinstance(x, np.ndarray) for x in leaves) else jnp


def stack_layers(params: Dict[str, Any]) -> Dict[str, Any]:
  """Stack `layers_{i}` subtrees into one `layers` subtree with a leading num_layers axis."""
  indices = sorted(int(m.group(1)) for m in map(_LAYER_KEY.match, params) if m)
  if indices != list(range(len(indices))):
    raise ValueError(f'Layer keys must be layers_0..layers_{len(indices) - 1}, got {indices}.')
  if not indices:
    return dict(params)
  per_layer = [params[f'layers_{i}'] for i in indices]
  xp = _xp(jax.tree.leaves(per_layer))
  stacked = jax.tree.map(lambda *xs: xp.stack(xs), *per_layer)
  rest = {k: v for k, v in params.items() if not _LAYER_KEY.match(k)}
  return {**rest, 'layers': stacked}


def unstack_layers(params: Dict[str, Any], num_layers: Optional[int] = None) -> Dict[str, Any]:
  """Split the `layers` subtree (leading axis = layer) into `layers_{i}` subtrees.

  Args:
    params: a parameter tree with a `layers` entry; returned unchanged without one.
    num_layers: expected length of the leading axis (checked); None takes it from the arrays.
  """
  if 'layers' not in params:
    return dict(params)
  stacked = params['layers']
  lengths = {x.shape[0] for x in jax.tree.leaves(stacked)}
  if num_layers is not None:
    lengths.add(num_layers)
  if len(lengths) != 1:
    raise ValueError(f'Stacked layers disagree on the number of layers: {sorted(lengths)}.')
  rest = {k: v for k, v in params.items() if k != 'layers'}
  layers = {f'layers_{i}': jax.tree.map(lambda x: x[i], stacked) for i in range(lengths.pop())}
  return {**rest, **layers}
