r"""Shapes, parameter count, per-device memory and FLOPs of a decoder from its gin files.

Builds the model abstractly (no weight is allocated), so it answers for 34B on a laptop:

  python tools/model_info.py --gin_file=gin/models/cm3leon_7b.gin --mesh_fsdp=64 --mesh_tensor=4

The mesh is abstract too: its axes need not match any device here. Per-device memory counts the
parameters and, for training, AdamW's two moments (float32) beside them; activations and temporaries
come from the AOT compile tool (tools/aot_compile.py).
"""

import math

from absl import app, flags
import jax
import jax.numpy as jnp
from jax.sharding import AbstractMesh

from cm3leon_jax import cli
from cm3leon_jax import flops, gin_utils, partitioning
from cm3leon_jax.models.decoder import Decoder

_GIN_FILES = flags.DEFINE_multi_string('gin_file', None, 'Gin files (model config).', required=True)
_GIN_BINDINGS = flags.DEFINE_multi_string('gin_bindings', [], 'Extra gin bindings.')
_MESH_DATA = flags.DEFINE_integer('mesh_data', 1, "Size of the mesh's 'data' axis.")
_MESH_FSDP = flags.DEFINE_integer('mesh_fsdp', 1, "Size of the mesh's 'fsdp' axis.")
_MESH_TENSOR = flags.DEFINE_integer('mesh_tensor', 1, "Size of the mesh's 'tensor' axis.")
_SEQ_LEN = flags.DEFINE_integer('seq_len', 0, 'Sequence length for FLOPs (0: max_length).')

ADAM_MOMENTS = 2  # AdamW keeps a first and a second moment per parameter, in float32.


def main(argv):
  del argv
  config = gin_utils.model_config(_GIN_FILES.value, _GIN_BINDINGS.value)
  model = Decoder(config)
  abstract = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 8), jnp.int32))['params']
  report = partitioning.parameter_report(abstract)
  shape = (_MESH_DATA.value, _MESH_FSDP.value, _MESH_TENSOR.value)
  mesh = AbstractMesh(shape, partitioning.MESH_AXES)
  shardings = partitioning.logical_shardings(abstract, mesh)
  param_bytes = partitioning.parameter_report(abstract, shardings).max_bytes_per_device
  seq_len = _SEQ_LEN.value or config.max_length
  print(f'config: {config}')
  print(f'parameters: {report.count:,} ({report.total_bytes / 2**30:.2f} GiB as {config.param_dtype})')
  print(f'mesh (data, fsdp, tensor) = {shape}: {math.prod(shape)} devices')
  print(f'  parameters per device: {param_bytes / 2**30:.3f} GiB')
  print(f'  parameters + AdamW moments per device: '
        f'{param_bytes * (1 + ADAM_MOMENTS * 4 / jnp.dtype(config.param_dtype).itemsize) / 2**30:.3f} GiB')
  print(f'training FLOPs per token at length {seq_len}: '
        f'{flops.training_flops_per_token(config, seq_len):.4g}')


def run():
  """Entry point of tools/model_info.py and `cm3leon-model-info`."""
  cli.run_app(main, __doc__)


if __name__ == '__main__':
  run()
