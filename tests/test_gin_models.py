"""Every gin file under gin/models parses and builds abstractly (no memory spent on weights)."""

import glob
import os

import jax
import jax.numpy as jnp
import pytest

from cm3leon_jax import gin_utils, partitioning
from cm3leon_jax.models.decoder import Decoder

MODEL_FILES = sorted(glob.glob(os.path.join(gin_utils.GIN_DIR, 'models', '*.gin')))
# Published sizes (approximate) to catch a wrong shape in a config.
EXPECTED_BILLIONS = {
    'cm3leon_350m': (0.30, 0.50), 'cm3leon_760m': (0.70, 0.95), 'cm3leon_7b': (6.3, 7.5),
    'chameleon_7b': (6.8, 7.4), 'chameleon_34b': (33.0, 35.5), 'tiny': (0.0, 0.001),
}


def test_all_expected_files_exist():
  names = {os.path.basename(f)[:-4] for f in MODEL_FILES}
  assert set(EXPECTED_BILLIONS) <= names


@pytest.mark.parametrize('path', MODEL_FILES, ids=lambda p: os.path.basename(p))
def test_gin_model_builds_abstractly(path):
  config = gin_utils.model_config([path])
  model = Decoder(config)
  abstract = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 8), jnp.int32))
  report = partitioning.parameter_report(abstract['params'])
  name = os.path.basename(path)[:-4]
  print(f'{name}: {report.count:,} parameters')
  low, high = EXPECTED_BILLIONS[name]
  assert low * 1e9 <= report.count <= high * 1e9


def test_gin_typo_names_the_parameter():
  with pytest.raises(ValueError, match='num_layer'):
    gin_utils.model_config(['models/tiny.gin'], ['config.DecoderConfig.num_layer = 3'])


def test_missing_gin_file_is_named():
  with pytest.raises(FileNotFoundError, match='nope.gin'):
    gin_utils.model_config(['models/nope.gin'])


RUN_FILES = sorted(glob.glob(os.path.join(gin_utils.GIN_DIR, 'runs', 'pretrain_*.gin')))


@pytest.mark.parametrize('path', [p for p in RUN_FILES if not p.endswith('common.gin')],
                         ids=os.path.basename)
def test_every_run_file_configures_the_trainer(path):
  import gin  # pylint: disable=g-import-not-at-top
  from cm3leon_jax import partitioning  # pylint: disable=g-import-not-at-top
  from cm3leon_jax.training import optimizer
  gin_utils.parse([path])
  assert gin.query_parameter('%BATCH_SIZE') * gin.query_parameter('%TASK_FEATURE_LENGTHS')[
      'targets'] == 2048 * 4096  # The paper's 8M-token batches.
  assert isinstance(gin_utils.macro_value([path], [], 'OPTIMIZER_CONFIG'),
                    optimizer.OptimizerConfig)
  mesh = gin.query_parameter('train.train.mesh_config').scoped_configurable_fn()
  assert isinstance(mesh, partitioning.MeshConfig)
  assert gin.query_parameter('train.train.mixture_or_task_name') is not None


def test_the_sft_run_file_has_the_papers_settings_and_needs_a_checkpoint():
  import gin  # pylint: disable=g-import-not-at-top
  from cm3leon_jax import train  # pylint: disable=g-import-not-at-top
  path = 'runs/sft.gin'
  gin_utils.parse([path])
  assert gin.query_parameter('%BATCH_SIZE') * gin.query_parameter('%TASK_FEATURE_LENGTHS')[
      'targets'] == 512 * 4096  # The paper's 2M-token SFT batches.
  optimizer_config = gin_utils.macro_value([path], [], 'OPTIMIZER_CONFIG')
  assert (optimizer_config.peak_learning_rate, optimizer_config.warmup_steps) == (5e-5, 150)
  assert gin.query_parameter('%MIXTURE_OR_TASK_NAME') == 'cm3leon_sft'
  gin_utils.parse([path])
  with pytest.raises(Exception, match='initial_checkpoint_path'):
    train.train()
