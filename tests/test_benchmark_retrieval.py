"""tools/benchmark.py retrieval runs end to end on a tiny bank: both searches ran over the bank and
queries the flags ask for, and the RESULT line has exactly its keys."""

import pytest

from benchmark_results import run_benchmark, shape


@pytest.mark.slow
def test_retrieval_benchmark_searches_the_flags_bank_on_both_sides():
  out, result = run_benchmark(
      'retrieval', ['--retrieval_num_vectors=20000', '--retrieval_dim=64',
                    '--retrieval_num_queries=100', '--retrieval_clusters=50',
                    '--retrieval_repeats=1'])
  assert list(result) == ['ours', 'peer', 'unit', 'ratio', 'recall_at_10', 'build_s',
                          'ours_shape', 'peer_shape']
  assert result['unit'] == 'queries/s'
  assert float(result['ours']) > 0 and float(result['peer']) > 0
  expected = {'vectors': 20000, 'dim': 64, 'queries': 100, 'k': 10}
  assert shape(result['ours_shape']) == expected and shape(result['peer_shape']) == expected
  assert 0.5 <= float(result['recall_at_10']) <= 1.0
  assert '| queries/s (median of 1) |' in out
