"""tools/benchmark.py fid runs end to end: both sides measured the same batch with the same
weights, and their features agree."""

import pytest

from benchmark_results import run_benchmark, shape


@pytest.mark.slow
def test_fid_benchmark_runs_both_sides_on_the_same_images_with_the_same_features():
  out, result = run_benchmark('fid', ['--fid_batch=2', '--fid_size=128', '--steps=1',
                                      '--warmup=0'])
  assert list(result) == ['ours', 'peer', 'unit', 'ratio', 'max_feature_difference',
                          'ours_shape', 'peer_shape']
  assert result['unit'] == 'images/s' and float(result['ours']) > 0 and float(result['peer']) > 0
  expected = {'batch': 2, 'height': 128, 'width': 128, 'features': 2048}
  assert shape(result['ours_shape']) == expected and shape(result['peer_shape']) == expected
  assert float(result['max_feature_difference']) < 1e-4
  assert '| ours/peer |' in out
