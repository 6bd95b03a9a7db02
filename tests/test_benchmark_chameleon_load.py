"""tools/benchmark.py chameleon_load: loading a checkpoint onto a mesh holds little more than the
checkpoint in memory, while the naive loader holds three times as much."""

import pytest

from benchmark_results import run_benchmark, shape


@pytest.mark.slow
def test_streamed_loading_stays_near_the_checkpoints_size_and_the_naive_loader_does_not():
  # 256 MiB keeps the test short; at 1 GiB ours is about 1.1x (docs/benchmarks.md).
  _, result = run_benchmark('chameleon_load', ['--load_size_mb=256'])
  assert result['unit'] == 'x_checkpoint_bytes'
  assert float(result['ours']) < 1.5 < float(result['peer'])
  assert shape(result['ours_shape']) == shape(result['peer_shape'])
  assert shape(result['ours_shape'])['devices'] == 8
