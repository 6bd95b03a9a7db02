"""The multi-process flags that the trainer and the evaluation tools share, and their start-up;
the mesh and dtype flags of the tools that load a model to sample from it."""

import jax
from absl import flags

from cm3leon_jax import partitioning

FLAGS = flags.FLAGS


def define_flags() -> None:
  """--coordinator_address, --num_processes, --process_id and --multihost (once per process)."""
  if 'coordinator_address' in FLAGS:
    return
  flags.DEFINE_string('coordinator_address', None,
                      'host:port of process 0, for multi-process runs off TPU.')
  flags.DEFINE_integer('num_processes', None, 'Processes in a multi-process run.')
  flags.DEFINE_integer('process_id', None, 'This process in a multi-process run.')
  flags.DEFINE_bool('multihost', False,
                    'Call jax.distributed.initialize() with no arguments (TPU pods).')


def initialize() -> None:
  """Join the multi-process run the flags describe (nothing for a single process)."""
  if FLAGS.coordinator_address:
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  elif FLAGS.multihost:
    jax.distributed.initialize()


def define_checkpoint_flags() -> None:
  """--checkpoint and --image_tokenizer of the sampling tools, with the model flags."""
  flags.DEFINE_string('checkpoint', None, 'A training run folder (MODEL_DIR), an exported model '
                      '(tools/export.py) or a Chameleon-family checkpoint (transformers\' or '
                      'Meta\'s layout).', required=True)
  define_model_flags()
  flags.DEFINE_string('image_tokenizer', None, 'Image tokenizer folder (default: the run\'s, or a '
                      'Chameleon folder\'s tokenizer/): saved here, or Meta\'s vqgan.ckpt + '
                      'vqgan.yaml.')


def define_model_flags(fsdp: int = 1) -> None:
  """--mesh_data, --mesh_fsdp (default `fsdp`), --mesh_tensor and --dtype of the sampling tools.
  Sizes all 1 mean one device, no mesh."""
  flags.DEFINE_integer('mesh_data', 1, 'Mesh axis sizes over this process\'s devices that the '
                       'model is laid out on (-1: the rest; all 1: one device).')
  flags.DEFINE_integer('mesh_fsdp', fsdp, 'See --mesh_data.')
  flags.DEFINE_integer('mesh_tensor', 1, 'See --mesh_data (it must divide the heads).')
  flags.DEFINE_enum('dtype', 'bfloat16', ['bfloat16', 'float32'],
                    'Parameter and compute dtype of a Chameleon-family checkpoint.')


def local_mesh():
  """The mesh the --mesh_* flags describe, over this process's devices (None for sizes all 1)."""
  if FLAGS.mesh_data == FLAGS.mesh_fsdp == FLAGS.mesh_tensor == 1:
    return None
  return partitioning.make_mesh(
      partitioning.MeshConfig(FLAGS.mesh_data, FLAGS.mesh_fsdp, FLAGS.mesh_tensor),
      jax.local_devices())
