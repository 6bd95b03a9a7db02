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


import pytest  # noqa: E402

import shared_data  # noqa: E402


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
