r"""Compile the real train step for a TPU slice on a CPU host and report its per-chip memory.

libtpu (the `tpu` extra, pip install "cm3leon_jax[tpu]"; requirements-test.txt pins it) compiles for
a described TPU topology without any TPU attached: the model, optimizer, abstract train state and
batch come from the gin files, the step is the trainer's (``make_train_step`` +
``jit_train_step``), and XLA's memory and cost analyses say whether it fits:

  python tools/aot_compile.py --gin_file=runs/pretrain_7b_v5p128.gin
  python tools/aot_compile.py --gin_file=models/cm3leon_350m.gin --topology=v5p-16 \
      --batch_size=256 --seq_len=4096 --microbatches=2

Flags override the run's gin macros (BATCH_SIZE, TASK_FEATURE_LENGTHS, MICROBATCHES, TOPOLOGY,
MESH_DATA, MESH_FSDP, MESH_TENSOR, TRAIN_STEPS, OPTIMIZER_CONFIG). The last line is
machine-readable: ``RESULT aot_compile model=... topology=... chips=... per_chip_gib=...
hbm_gib=... fits=true|false step_flops=... est_step_s=... ...``.

FLOPs: XLA's cost analysis is per device and counts the body of a while loop once (not times its
trip count), so with scanned layers and micro-batches it undercounts a step by a large factor, and
so does its time estimate ('optimal_seconds'). The tool therefore also counts the matmul FLOPs of
the step's jaxpr with scan trip counts (global; rematerialised recomputation included): that is
``step_flops``, and ``est_step_s`` is that count per chip at the chip's peak bf16 rate (a lower
bound: 100% MFU, no communication).
"""

import dataclasses
import importlib.util
import math
import os
import re
import time
from typing import Any, Tuple

# The host backend is only needed for tracing; the TPU compiler comes from the topology. Keeping the
# host on CPU stops libtpu from claiming an attached TPU (or probing for one) on a TPU VM.
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
# Compiling never opens a chip, so it need not hold libtpu's one-process lock (which any other JAX
# process on the host, probing for a TPU, may hold).
os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')

from absl import app, flags  # noqa: E402  (after JAX_PLATFORMS)
import flax.linen as nn  # noqa: E402
import gin  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax.experimental import topologies  # noqa: E402

from cm3leon_jax import cli
from cm3leon_jax import flops, gin_utils, partitioning  # noqa: E402
from cm3leon_jax.training import state as state_lib
from cm3leon_jax.training import optimizer as optimizer_lib  # noqa: E402
from cm3leon_jax.models.decoder import Decoder  # noqa: E402

_GIN_FILES = flags.DEFINE_multi_string('gin_file', None, 'Gin files (a run or a model).',
                                       required=True)
_GIN_BINDINGS = flags.DEFINE_multi_string('gin_binding', [], 'Extra gin bindings.')
_TOPOLOGY = flags.DEFINE_string(
    'topology', None, "TPU slice: 'v5p:4x4x4' (chips per dimension) or 'v5p-128' (v4/v5p: "
    'TensorCores, 2 per chip; v5e/v6e: chips). Default: the gin macro TOPOLOGY.')
_MESH_DATA = flags.DEFINE_integer('mesh_data', None, "'data' axis (default: MESH_DATA or 1).")
_MESH_FSDP = flags.DEFINE_integer('mesh_fsdp', None, "'fsdp' axis (default: MESH_FSDP or -1).")
_MESH_TENSOR = flags.DEFINE_integer('mesh_tensor', None,
                                    "'tensor' axis (default: MESH_TENSOR or 1).")
_BATCH_SIZE = flags.DEFINE_integer('batch_size', None,
                                   'Global sequences per step (default: BATCH_SIZE).')
_SEQ_LEN = flags.DEFINE_integer(
    'seq_len', None, "Tokens per sequence (default: TASK_FEATURE_LENGTHS['targets'], else the "
    "model's max_length).")
_MICROBATCHES = flags.DEFINE_integer('microbatches', None,
                                     'Gradient-accumulation steps (default: MICROBATCHES or 1).')
_HBM_GIB = flags.DEFINE_float('hbm_gib', None, "Per-chip HBM in GiB (default: the chip's).")


@dataclasses.dataclass(frozen=True)
class Chip:
  """A TPU generation: memory, peak rate and how its slices are named."""

  hbm_gib: float
  peak_bf16_flops: float  # per chip, datasheet
  cores_per_chip_in_name: int  # v4-N / v5p-N count TensorCores; v5e-N / v6e-N count chips
  dims: int  # torus dimensions of its topology names
  chip_config_name: str  # v4 and v5p run their two TensorCores as one device ("megacore")


CHIPS = {
    'v4': Chip(32, 275e12, 2, 3, 'megacore'),
    'v5e': Chip(16, 197e12, 1, 2, 'default'),
    'v5p': Chip(95, 459e12, 2, 3, 'megacore'),
    'v6e': Chip(32, 918e12, 1, 2, 'default'),
}


@dataclasses.dataclass(frozen=True)
class Settings:
  """What one compile is for, after flags and gin macros are merged."""

  topology: str
  mesh: partitioning.MeshConfig
  batch_size: int
  seq_len: int
  microbatches: int
  train_steps: int


def _slice_shape(chips: int, dims: int) -> Tuple[int, ...]:
  """Google's slice shape for a chip count: double the smallest (then last) dimension in turn."""
  shape = [2, 2, 1] if dims == 3 else [1, 1]
  if chips < math.prod(shape) or chips & (chips - 1):
    raise ValueError(f'No {dims}D slice of {chips} chips (a power of two, at least '
                     f'{math.prod(shape)}).')
  while math.prod(shape) < chips:
    smallest = min(shape)
    index = max(i for i, size in enumerate(shape) if size == smallest)
    shape[index] *= 2
  return tuple(shape)


def parse_topology(name: str) -> Tuple[str, str]:
  """(generation, get_topology_desc name) from 'v5p:4x4x4' or the shorthand 'v5p-128'."""
  match = re.fullmatch(r'(v4|v5e|v5p|v6e)(?::(\d+(?:x\d+)*)|-(\d+))', name)
  if not match:
    raise ValueError(f'Unknown topology {name!r}; use e.g. v5p:4x4x4, v5p-128, v4-64, v5e-16 '
                     f'(generations: {sorted(CHIPS)}).')
  generation, dims, count = match.groups()
  chip = CHIPS[generation]
  if dims:
    if len(dims.split('x')) != chip.dims:
      raise ValueError(f'{generation} topologies have {chip.dims} dimensions, got {name!r}.')
    return generation, name
  count = int(count)
  if count % chip.cores_per_chip_in_name:
    raise ValueError(f'{name!r}: {generation}-N counts TensorCores, {chip.cores_per_chip_in_name} '
                     'per chip, so N must be even.')
  shape = _slice_shape(count // chip.cores_per_chip_in_name, chip.dims)
  return generation, f"{generation}:{'x'.join(map(str, shape))}"


def _macro(name: str, default: Any = None) -> Any:
  """A macro of the already parsed gin files (a configurable reference is called), or `default`."""
  try:
    value = gin.query_parameter(f'%{name}')
  except ValueError:
    return default
  # Unlike gin_utils.macro_value this does not parse again and has a default.
  return value.scoped_configurable_fn() if hasattr(value, 'scoped_configurable_fn') else value


def _pick(flag_value, macro: str, default):
  return flag_value if flag_value is not None else _macro(macro, default)


def resolve_settings(model_max_length: int) -> Settings:
  """Merge the flags over the gin macros (gin must be parsed already)."""
  topology = _pick(_TOPOLOGY.value, 'TOPOLOGY', None)
  batch_size = _pick(_BATCH_SIZE.value, 'BATCH_SIZE', None)
  if topology is None or batch_size is None:
    raise app.UsageError('Give --topology and --batch_size, or gin files with the TOPOLOGY and '
                         'BATCH_SIZE macros (gin/runs/).')
  lengths = _macro('TASK_FEATURE_LENGTHS', {})
  seq_len = _SEQ_LEN.value or lengths.get('targets', model_max_length)
  mesh = partitioning.MeshConfig(_pick(_MESH_DATA.value, 'MESH_DATA', 1),
                                 _pick(_MESH_FSDP.value, 'MESH_FSDP', -1),
                                 _pick(_MESH_TENSOR.value, 'MESH_TENSOR', 1))
  return Settings(topology, mesh, batch_size, seq_len,
                  _pick(_MICROBATCHES.value, 'MICROBATCHES', 1), _macro('TRAIN_STEPS', 1))


def _sub_jaxprs(value):
  """The jaxprs held by an equation parameter (a jaxpr, a closed jaxpr or a tuple of them)."""
  if isinstance(value, jax.extend.core.ClosedJaxpr):
    return [value.jaxpr]
  if isinstance(value, jax.extend.core.Jaxpr):
    return [value]
  if isinstance(value, (tuple, list)):
    return [j for item in value for j in _sub_jaxprs(item)]
  return []


def matmul_flops(jaxpr) -> float:
  """2 * multiply-accumulates of every dot_general, scan bodies times their length.

  A cond counts its costliest branch; a while loop (unknown trip count) counts its body once.
  """
  total = 0.0
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == 'dot_general':
      (contracting, _), _ = eqn.params['dimension_numbers']
      lhs_shape = eqn.invars[0].aval.shape
      total += 2 * math.prod(eqn.outvars[0].aval.shape) * math.prod(
          lhs_shape[d] for d in contracting)
      continue
    inner = [matmul_flops(j) for value in eqn.params.values() for j in _sub_jaxprs(value)]
    if not inner:
      continue
    if eqn.primitive.name == 'cond':
      total += max(inner)
    else:
      total += sum(inner) * eqn.params.get('length', 1)
  return total


def compile_step(model: Decoder, optimizer_config: optimizer_lib.OptimizerConfig,
                 settings: Settings, devices):
  """(compiled step, jaxpr matmul FLOPs, mesh shape) of the train step on `devices`."""
  optimizer = optimizer_lib.make_optimizer(optimizer_config, settings.train_steps)
  schedule = optimizer_lib.learning_rate_schedule(optimizer_config, settings.train_steps)
  mesh = partitioning.make_mesh(settings.mesh, devices)
  abstract, shardings = state_lib.abstract_train_state(model, optimizer, mesh)
  state = state_lib.with_shardings(abstract, shardings)
  batch_spec = jax.ShapeDtypeStruct((settings.batch_size, settings.seq_len), jnp.int32,
                                    sharding=state_lib.batch_sharding(mesh))
  batch = {k: batch_spec for k in state_lib.BATCH_FEATURES}
  step = state_lib.make_train_step(model, optimizer, schedule,
                                   state_lib.StepConfig(microbatches=settings.microbatches))
  lowered = state_lib.jit_train_step(step, mesh, shardings).lower(state, batch)
  with jax.set_mesh(mesh), nn.logical_axis_rules(partitioning.LOGICAL_AXIS_RULES):
    jaxpr = jax.make_jaxpr(step)(state, batch).jaxpr
  return lowered.compile(), matmul_flops(jaxpr), tuple(mesh.shape.values())


def per_chip_bytes(memory) -> int:
  """Peak HBM of one chip: arguments + temporaries + outputs - aliased (donated) + code."""
  return (memory.argument_size_in_bytes + memory.temp_size_in_bytes +
          memory.output_size_in_bytes - memory.alias_size_in_bytes +
          memory.generated_code_size_in_bytes)


def _gin_optimizer_config() -> optimizer_lib.OptimizerConfig:
  return _macro('OPTIMIZER_CONFIG', None) or optimizer_lib.OptimizerConfig()


def _model_name(gin_files) -> str:
  return os.path.splitext(os.path.basename(gin_files[-1]))[0]


# Without libtpu JAX has no TPU compiler, and get_topology_desc fails with "JAX TPU support not
# installed". The runtime set (requirements.txt) leaves libtpu out: installed, it makes every JAX
# process on a CPU host probe for a TPU.
MISSING_LIBTPU = ('tools/aot_compile.py compiles with the TPU compiler, libtpu, which is not '
                  'installed. Install it with `pip install "cm3leon_jax[tpu]"` (or `pip install -r '
                  'requirements-test.txt`, which pins it), or point TPU_LIBRARY_PATH at a '
                  'libtpu.so.')


def check_tpu_compiler() -> None:
  """SystemExit with MISSING_LIBTPU when JAX would find no TPU compiler."""
  if importlib.util.find_spec('libtpu') is None and not os.environ.get('TPU_LIBRARY_PATH'):
    raise SystemExit(MISSING_LIBTPU)


def main(argv):
  del argv
  check_tpu_compiler()
  config = gin_utils.model_config(_GIN_FILES.value, _GIN_BINDINGS.value)
  settings = resolve_settings(config.max_length)
  optimizer_config = _gin_optimizer_config()
  generation, topology_name = parse_topology(settings.topology)
  chip = CHIPS[generation]
  hbm_gib = _HBM_GIB.value or chip.hbm_gib
  devices = topologies.get_topology_desc(platform='tpu', topology_name=topology_name,
                                         chip_config_name=chip.chip_config_name).devices
  print(f'model: {config}')
  print(f'optimizer: {optimizer_config}')
  print(f'topology {topology_name}: {len(devices)} x {devices[0].device_kind}, '
        f'{hbm_gib:g} GiB HBM each')
  start = time.time()
  compiled, step_flops, mesh_shape = compile_step(Decoder(config), optimizer_config, settings,
                                                  devices)
  compile_s = time.time() - start
  memory, cost = compiled.memory_analysis(), compiled.cost_analysis()
  total = per_chip_bytes(memory)
  fits = total <= hbm_gib * 2**30
  tokens = settings.batch_size * settings.seq_len
  model_flops = flops.training_flops_per_token(config, settings.seq_len) * tokens
  est_step_s = step_flops / len(devices) / chip.peak_bf16_flops
  gib = lambda b: f'{b / 2**30:.2f} GiB'
  print(f'mesh (data, fsdp, tensor) = {mesh_shape}; batch {settings.batch_size} x '
        f'{settings.seq_len} tokens in {settings.microbatches} microbatches; compiled in '
        f'{compile_s:.0f} s')
  print(f'per chip: arguments {gib(memory.argument_size_in_bytes)}, temporaries '
        f'{gib(memory.temp_size_in_bytes)}, output {gib(memory.output_size_in_bytes)}, aliased '
        f'{gib(memory.alias_size_in_bytes)}, code {gib(memory.generated_code_size_in_bytes)}')
  print(f'per chip total: {gib(total)} of {hbm_gib:g} GiB: {"FITS" if fits else "DOES NOT FIT"}')
  print(f'FLOPs per step: model (flops.py, global) {model_flops:.4g}; executed matmuls (jaxpr, '
        f'global, remat included) {step_flops:.4g}; XLA cost analysis (per chip, loop bodies '
        f'once) {cost["flops"]:.4g}')
  print(f'step time: >= {est_step_s:.3g} s at peak ({chip.peak_bf16_flops / 1e12:g} TFLOP/s per '
        f"chip); XLA's estimate (loop bodies once) {cost['optimal_seconds']:.3g} s")
  print(f'RESULT aot_compile model={_model_name(_GIN_FILES.value)} topology={topology_name} '
        f'chips={len(devices)} mesh={"x".join(map(str, mesh_shape))} '
        f'microbatches={settings.microbatches} per_chip_gib={total / 2**30:.2f} '
        f'hbm_gib={hbm_gib:g} fits={str(fits).lower()} step_flops={step_flops:.4g} '
        f'model_flops={model_flops:.4g} xla_flops_per_chip={cost["flops"]:.4g} '
        f'est_step_s={est_step_s:.4g} xla_optimal_s={cost["optimal_seconds"]:.4g} '
        f'compile_s={compile_s:.0f}')


def run():
  """Entry point of tools/aot_compile.py and `cm3leon-aot-compile`."""
  cli.run_app(main, __doc__)


if __name__ == '__main__':
  run()
