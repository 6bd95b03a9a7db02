"""tools/benchmark.py decoder, train and pipeline run end to end on tiny shapes: each RESULT line
has exactly its keys, and both sides ran the shape the flags ask for."""

import pytest

from benchmark_results import flag_values, run_benchmark, shape

TINY_SHAPE = ['--layers=1', '--embed_dim=64', '--heads=2', '--vocab=256', '--seq_len=32',
              '--batch=2']
TINY_DECODER = TINY_SHAPE + ['--steps=2', '--warmup=1', '--matmul_size=128']
SPEED_KEYS = ['ours', 'peer', 'unit', 'ratio']


def decoder_shape() -> dict:
  """The shape both sides must run under TINY_SHAPE (the MLP is 4 * embed_dim)."""
  dims = flag_values(TINY_SHAPE)
  return dict(dims, mlp=4 * dims['embed_dim'])


def assert_both_ran(result, expected: dict):
  assert shape(result['ours_shape']) == expected, result
  assert shape(result['peer_shape']) == expected, result


@pytest.mark.slow
def test_decoder_benchmark_runs_both_sides_on_the_flags_shape():
  out, result = run_benchmark('decoder', TINY_DECODER)
  assert list(result) == SPEED_KEYS + ['flops_util', 'ours_shape', 'peer_shape']
  assert result['unit'] == 'tokens/s'
  assert float(result['ours']) > 0 and float(result['peer']) > 0
  assert_both_ran(result, decoder_shape())
  assert '| tokens/s |' in out and '(the same)' in out


@pytest.mark.slow
def test_train_benchmark_runs_both_sides_on_the_flags_shape():
  out, result = run_benchmark('train', TINY_DECODER)
  assert list(result) == SPEED_KEYS + ['mfu', 'ours_shape', 'peer_shape']
  assert result['unit'] == 'tokens/s'
  assert float(result['ours']) > 0 and float(result['peer']) > 0 and float(result['mfu']) > 0
  assert_both_ran(result, decoder_shape())
  assert '| tokens/s |' in out


@pytest.mark.slow
def test_pipeline_benchmark_feeds_and_trains_on_the_flags_batch():
  _, result = run_benchmark(
      'pipeline', ['--pipeline_documents=100', '--pipeline_length=128', '--pipeline_batch=4',
                   '--pipeline_batches=5', '--train_steps=2', '--preprocess_images=40'])
  assert list(result) == SPEED_KEYS + ['preprocess_1_worker', 'preprocess_2_workers',
                                       'preprocess_unit', 'ours_shape', 'peer_shape']
  assert (result['unit'], result['preprocess_unit']) == ('batches/s', 'images/s')
  assert min(float(result[k]) for k in ('ours', 'peer', 'preprocess_1_worker',
                                         'preprocess_2_workers')) > 0
  assert_both_ran(result, {'batch': 4, 'length': 128})
