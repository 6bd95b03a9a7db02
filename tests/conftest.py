"""Test setup: eight forced CPU devices (for the sharding tests), float32 matmuls, and one
persistent compilation cache per test run.

XLA_FLAGS must be set before JAX initialises its backend, hence at import time here.
"""

import os

# `make test` runs two workers on two cores: each process computes on one thread, since two
# processes whose thread pools each claim every core spend their time contending for them.
os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=8'
                           ' --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1'
                           ).strip()
for _threads in ('OMP_NUM_THREADS', 'TF_NUM_INTRAOP_THREADS', 'TF_NUM_INTEROP_THREADS'):
  os.environ.setdefault(_threads, '1')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
# libtpu (for tools/aot_compile.py) is installed, so JAX would probe for a TPU in every process
# (and its subprocesses) and take libtpu's lock; the tests run on CPU.
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

# triton's native library crashes the process when it loads after TensorFlow's (torch imports it
# lazily, with transformers' models); loaded first, both work. Test modules import in any order.
try:
  import triton  # noqa: E402,F401  pylint: disable=unused-import
except ImportError:
  pass

import jax  # noqa: E402  (must come after XLA_FLAGS)

jax.config.update('jax_default_matmul_precision', 'highest')


import pytest  # noqa: E402

import shared_data  # noqa: E402

_RUN_CACHE = 'CM3LEON_TEST_COMPILATION_CACHE'
# Below this, compiling again is about as fast as reading the cache.
_MIN_COMPILE_SECONDS = '0.3'


@pytest.hookimpl(trylast=True)  # After pytest's own configure, which makes the temporary root.
def pytest_configure(config):
  """Point JAX's persistent compilation cache at a folder of this run, shared by the xdist
  workers and every process a test starts (they inherit the environment): the same program (a
  trainer's step, a tool's sampler) is then compiled once per run, not once per process. Each run
  starts with an empty cache."""
  folder = os.environ.get(_RUN_CACHE)
  if not folder:  # The first process of the run: the controller, or the only one without xdist.
    folder = str(config._tmp_path_factory.getbasetemp() / 'jax_compilation_cache')  # pylint: disable=protected-access
    os.environ[_RUN_CACHE] = folder
  os.environ['JAX_COMPILATION_CACHE_DIR'] = folder
  os.environ['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = _MIN_COMPILE_SECONDS
  jax.config.update('jax_compilation_cache_dir', folder)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', float(_MIN_COMPILE_SECONDS))


def _build_tokenizers(folder):
  import data_helpers  # pylint: disable=g-import-not-at-top  (TensorFlow: only when asked for)
  data_helpers.make_text_vocabulary(folder)
  data_helpers.make_image_tokenizer(folder)


@pytest.fixture(scope='session')
def shared_tokenizers(tmp_path_factory):
  """(text vocabulary, image tokenizer folder) of data_helpers, built once per test run."""
  folder = shared_data.cached_folder(tmp_path_factory, 'tokenizers', _build_tokenizers)
  return os.path.join(folder, 'text.model'), os.path.join(folder, 'image_tokenizer')


@pytest.fixture(scope='session')
def synthetic_data_dir(tmp_path_factory, shared_tokenizers):
  """A $CM3LEON_DATA_DIR holding the standard synthetic store (train 80, validation 20 documents)
  made with `shared_tokenizers`, built once per test run. Tests only read it."""

  def build(folder):
    import data_helpers  # pylint: disable=g-import-not-at-top
    from cm3leon_jax.data import preprocess  # pylint: disable=g-import-not-at-top
    from cm3leon_jax.data.sources import SyntheticSource  # pylint: disable=g-import-not-at-top
    for split, count in (('train', 80), ('validation', 20)):
      config = data_helpers.preprocess_config(os.path.join(folder, 'synthetic', split),
                                              *shared_tokenizers)
      preprocess.run(SyntheticSource(count, split), config)

  return shared_data.cached_folder(tmp_path_factory, 'synthetic_data', build)


def pytest_collection_modifyitems(items):
  """Files that hold slow tests run first. `make test` hands each file to one xdist worker as a
  unit (its fixtures are then built once, with no worker waiting on another's build); starting
  the longest units first keeps both workers busy to the end."""
  slow_files = {item.path for item in items if item.get_closest_marker('slow')}
  items.sort(key=lambda item: item.path not in slow_files)  # Stable: the order within a file stays.
