"""Test setup: eight forced CPU devices (for the sharding tests) and float32 matmuls.

XLA_FLAGS must be set before JAX initialises its backend, hence at import time here.
"""

import os

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=8').strip()
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
# libtpu (for tools/aot_compile.py) is installed, so JAX would probe for a TPU in every process
# (and its subprocesses) and take libtpu's lock; the tests run on CPU.
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import jax  # noqa: E402  (must come after XLA_FLAGS)

jax.config.update('jax_default_matmul_precision', 'highest')
