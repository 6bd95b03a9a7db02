"""tools/benchmark.py retrieval runs end to end on a tiny bank and prints its RESULT line."""

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_retrieval_benchmark_prints_a_result_line():
  args = ['retrieval', '--retrieval_num_vectors=20000', '--retrieval_dim=64',
          '--retrieval_num_queries=100', '--retrieval_clusters=50', '--retrieval_repeats=1']
  out = subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'benchmark.py'), *args],
                       capture_output=True, text=True, check=True, cwd=ROOT).stdout
  result = re.search(r'^RESULT retrieval ours=([\d.]+) peer=([\d.]+) unit=queries/s '
                     r'ratio=([\d.]+) recall_at_10=([\d.]+) build_s=([\d.]+)$', out, re.M)
  assert result, out
  ours, peer, ratio, recall, _ = map(float, result.groups())
  assert ours > 0 and peer > 0
  assert ratio == pytest.approx(ours / peer, rel=1e-2)
  assert 0.5 <= recall <= 1.0
  assert '| queries/s (median of 1) |' in out
