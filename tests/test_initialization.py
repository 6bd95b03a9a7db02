"""Initialisation statistics of the cm3leon family match CM3Leon (arXiv 2309.02591) section 2.3."""

import numpy as np
import pytest
from scipy import stats

from helpers import model_and_params, tiny_config

STD, POSITION_STD = 0.006, 0.0002
# A normal truncated at +-3 std keeps this fraction of its std.
TRUNCATED_FACTOR = float(stats.truncnorm(-3, 3).std())


@pytest.fixture(scope='module')
def params():
  config = tiny_config(embed_dim=256, num_heads=4, num_layers=2, vocab_size=1024, max_length=512,
                       zero_init_residual=True)
  return model_and_params(config)[1]


def assert_truncated_normal(values, std):
  values = np.asarray(values).ravel()
  assert abs(values.mean()) < 0.02 * std
  np.testing.assert_allclose(values.std(), std * TRUNCATED_FACTOR, rtol=0.02)
  assert np.abs(values).max() <= 3 * std + 1e-9
  # The tails are really cut near 3 std (not at 2, as jax's default truncation would).
  assert np.abs(values).max() > 2.8 * std


def test_weight_matrices_are_truncated_normal(params):
  layer = params['layers']
  for weights in (params['embed']['token'], params['lm_head']['kernel'],
                  layer['attention']['query']['kernel'], layer['attention']['key']['kernel'],
                  layer['attention']['value']['kernel'], layer['mlp']['wi']['kernel']):
    assert_truncated_normal(weights, STD)


def test_residual_output_projections_are_zero(params):
  assert not np.any(params['layers']['attention']['out']['kernel'])
  assert not np.any(params['layers']['mlp']['wo']['kernel'])


def test_positions_have_their_own_std(params):
  assert_truncated_normal(params['embed']['position'], POSITION_STD)


def test_layer_norms_have_no_parameters(params):
  paths = [k for k in params['layers'] if 'norm' in k]
  assert paths == [] and 'final_norm' not in params
