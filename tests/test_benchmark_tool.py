"""tools/benchmark.py runs end to end on a tiny shape and prints its RESULT line."""

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_DECODER = ['--layers=1', '--embed_dim=64', '--heads=2', '--vocab=256', '--seq_len=32',
                '--batch=2', '--steps=2', '--warmup=1', '--matmul_size=128']


def benchmark_result(args, pattern):
  """(stdout, the numbers of its RESULT line) of tools/benchmark.py run with `args`."""
  out = subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'benchmark.py'), *args],
                       capture_output=True, text=True, check=True, cwd=ROOT).stdout
  result = re.search(pattern, out, re.M)
  assert result, out
  return out, tuple(map(float, result.groups()))


@pytest.mark.slow
def test_decoder_benchmark_prints_a_result_line():
  out, (ours, peer, ratio, _) = benchmark_result(
      ['decoder'] + TINY_DECODER,
      r'^RESULT decoder ours=([\d.]+) peer=([\d.]+) unit=tokens/s ratio=([\d.]+) '
      r'flops_util=([\d.]+)$')
  assert ours > 0 and peer > 0
  assert ratio == pytest.approx(ours / peer, rel=1e-2)
  assert '| tokens/s |' in out


@pytest.mark.slow
def test_pipeline_benchmark_prints_a_result_line():
  _, (ours, peer, ratio, one, two) = benchmark_result(
      ['pipeline', '--pipeline_documents=100', '--pipeline_length=128', '--pipeline_batch=4',
       '--pipeline_batches=5', '--train_steps=2', '--preprocess_images=40'],
      r'^RESULT pipeline ours=([\d.]+) peer=([\d.]+) unit=batches/s ratio=([\d.]+) '
      r'preprocess_1_worker=([\d.]+) preprocess_2_workers=([\d.]+) preprocess_unit=images/s$')
  assert min(ours, peer, one, two) > 0
  assert ratio == pytest.approx(ours / peer, rel=1e-2)


@pytest.mark.slow
def test_train_benchmark_prints_a_result_line():
  out, (ours, peer, ratio, mfu) = benchmark_result(
      ['train'] + TINY_DECODER,
      r'^RESULT train ours=([\d.]+) peer=([\d.]+) unit=tokens/s ratio=([\d.]+) mfu=([\d.]+)$')
  assert ours > 0 and peer > 0 and mfu > 0
  assert ratio == pytest.approx(ours / peer, rel=1e-2)
  assert '| tokens/s |' in out
