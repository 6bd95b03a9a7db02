"""The multi-process flags that the trainer and the evaluation tools share, and their start-up."""

import jax
from absl import flags

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
