"""Device mesh, logical-to-mesh axis rules, sharded initialisation and a memory report.

The mesh has three axes: 'data' (pure data parallelism: parameters replicated), 'fsdp' (data
parallelism whose parameters and optimizer state are sharded, ZeRO-3 style) and 'tensor'
(Megatron-style sharding of heads, MLP width and vocabulary). Modules name their axes logically
(t5x names: batch, length, embed, mlp, heads, kv, vocab, layers); ``LOGICAL_AXIS_RULES`` is the one
table that maps those names to mesh axes.
"""

import dataclasses
import math
from typing import Any, Callable, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding

MESH_AXES = ('data', 'fsdp', 'tensor')

# Order matters: flax gives each array dimension the first rule whose mesh axes are still unused by
# that array. So activations [batch, length, embed] put batch on (data, fsdp) and leave embed
# replicated, while the parameter [vocab, embed] puts embed on fsdp.
LOGICAL_AXIS_RULES: Tuple[Tuple[str, Any], ...] = (
    ('batch', ('data', 'fsdp')),
    ('vocab', 'tensor'),
    ('heads', 'tensor'),
    ('kv_heads', 'tensor'),
    ('mlp', 'tensor'),
    ('embed', 'fsdp'),
    ('length', None),
    ('positions', None),
    ('kv', None),
    ('layers', None),
)


class MeshError(ValueError):
  """A mesh shape that does not fit the available devices."""


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """Sizes of the ('data', 'fsdp', 'tensor') mesh axes; one of them may be -1 (all the rest)."""

  data: int = 1
  fsdp: int = -1
  tensor: int = 1

  def shape(self, num_devices: int) -> Tuple[int, int, int]:
    """The concrete mesh shape for `num_devices` devices."""
    sizes = [self.data, self.fsdp, self.tensor]
    if sizes.count(-1) > 1:
      raise MeshError(f'At most one mesh axis may be -1, got {self}.')
    for name, size in zip(MESH_AXES, sizes):
      if size == 0 or size < -1:
        raise MeshError(f'Mesh axis {name!r} must be a positive size or -1, got {size}.')
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
      if num_devices % known:
        raise MeshError(f'{num_devices} devices cannot be split into {self} (fixed axes multiply '
                        f'to {known}, which does not divide {num_devices}).')
      sizes[sizes.index(-1)] = num_devices // known
    if math.prod(sizes) != num_devices:
      raise MeshError(f'Mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, but '
                      f'{num_devices} are available.')
    return tuple(sizes)


def make_mesh(config: MeshConfig = MeshConfig(), devices: Optional[Sequence[Any]] = None) -> Mesh:
  """A Mesh over `devices` (default: all) with axes ('data', 'fsdp', 'tensor')."""
  devices = list(jax.devices() if devices is None else devices)
  shape = config.shape(len(devices))
  try:
    device_grid = mesh_utils.create_device_mesh(shape, devices=devices)
  except (AssertionError, NotImplementedError, ValueError):
    # Topology-aware placement is not defined for every platform (e.g. forced CPU devices).
    device_grid = np.asarray(devices).reshape(shape)
  return Mesh(device_grid, MESH_AXES)


def logical_shardings(boxed_tree, mesh: Mesh, rules=LOGICAL_AXIS_RULES):
  """NamedShardings for a tree of nn.Partitioned (or abstract boxed) leaves."""
  specs = nn.get_partition_spec(boxed_tree)
  return nn.logical_to_mesh_sharding(specs, mesh, rules)


def check_divisible(abstract_tree, shardings) -> None:
  """Raise MeshError naming every array whose sharded dimension the mesh does not divide (e.g.
  4 heads over a tensor axis of 8), instead of XLA's error about an unnamed array."""
  problems = []
  for path, (leaf, sharding) in _flat_with_paths(abstract_tree, shardings):
    mesh_sizes = dict(zip(sharding.mesh.axis_names, sharding.mesh.devices.shape))
    for dim, axes in enumerate(sharding.spec):
      names = (axes,) if isinstance(axes, str) else tuple(axes or ())
      parts = math.prod(mesh_sizes[name] for name in names)
      if names and leaf.shape[dim] % parts:
        problems.append(f'{path}: dimension {dim} of size {leaf.shape[dim]} split over mesh '
                        f'axes {names} of {parts} devices')
  if problems:
    raise MeshError('The mesh does not divide these parameters (choose mesh sizes that divide '
                    'the heads, MLP width and vocabulary):\n  ' + '\n  '.join(problems))


def _flat_with_paths(tree, shardings):
  leaves = jax.tree_util.tree_leaves_with_path(tree)
  flat_shardings = jax.tree_util.tree_leaves(
      shardings, is_leaf=lambda x: isinstance(x, NamedSharding))
  return [(jax.tree_util.keystr(path, simple=True, separator='/'), (leaf, sharding))
          for (path, leaf), sharding in zip(leaves, flat_shardings)]


def activation_sharding(mesh: Mesh, logical_axes: Sequence[Optional[str]],
                        rules=LOGICAL_AXIS_RULES) -> NamedSharding:
  """The sharding of an activation (e.g. a batch) with the given logical axis names."""
  spec = nn.logical_to_mesh_axes(tuple(logical_axes), rules)
  return NamedSharding(mesh, spec)


def sharded_init(init_fn: Callable[..., Any], mesh: Mesh, *args,
                 rules=LOGICAL_AXIS_RULES) -> Tuple[Any, Any]:
  """Initialise a tree directly into its sharded layout, never materialising it on one device.

  Args:
    init_fn: returns a tree of nn.Partitioned leaves (e.g. ``lambda rng: model.init(rng, x)``).
    mesh: the device mesh.
    *args: arguments to `init_fn` (e.g. the PRNG key).
    rules: logical axis rules.

  Returns:
    (tree, shardings): the unboxed, sharded arrays and their NamedShardings.
  """
  abstract = jax.eval_shape(init_fn, *args)
  shardings = logical_shardings(abstract, mesh, rules)
  unboxed_init = lambda *a: nn.meta.unbox(init_fn(*a))
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    tree = jax.jit(unboxed_init, out_shardings=shardings)(*args)
  return tree, shardings


@dataclasses.dataclass(frozen=True)
class ParameterReport:
  """Parameter count and memory of a (possibly sharded or abstract) tree."""

  count: int
  total_bytes: int
  max_bytes_per_device: int

  def __str__(self):
    return (f'{self.count:,} parameters, {self.total_bytes / 2**30:.3f} GiB in all, '
            f'{self.max_bytes_per_device / 2**30:.3f} GiB on the fullest device')


def parameter_report(tree, shardings=None) -> ParameterReport:
  """Count parameters and bytes, in all and per device.

  Args:
    tree: arrays or jax.ShapeDtypeStructs (boxed leaves are unboxed).
    shardings: optional matching tree of shardings (those of an AbstractMesh work too, so a pod's
      layout can be costed on a laptop); by default each leaf's own sharding. A leaf without one
      counts in full on one device.

  Every array of a tree is assumed to span the same mesh, where each device holds one equally
  shaped shard, so the per-device figure is the sum of the shard sizes.
  """
  leaves = jax.tree.leaves(nn.meta.unbox(tree))
  if shardings is None:
    shard_list = [getattr(leaf, 'sharding', None) for leaf in leaves]
  else:
    shard_list = jax.tree.leaves(shardings, is_leaf=lambda x: isinstance(x, jax.sharding.Sharding))
  count = total = per_device = 0
  for leaf, sharding in zip(leaves, shard_list):
    itemsize = jnp.dtype(leaf.dtype).itemsize
    count += math.prod(leaf.shape)
    total += math.prod(leaf.shape) * itemsize
    shard_shape = leaf.shape if sharding is None else sharding.shard_shape(leaf.shape)
    per_device += math.prod(shard_shape) * itemsize
  return ParameterReport(count, total, per_device)
