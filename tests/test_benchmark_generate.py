"""tools/benchmark.py generate runs end to end on tiny models and prints its RESULT line."""

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUMBER = r'(-?[\d.]+)'


@pytest.mark.slow
def test_generate_benchmark_prints_a_result_line():
  tiny = ['--{}_layers=1', '--{}_hidden=64', '--{}_heads=2', '--{}_mlp=96', '--{}_vocab=256']
  args = ['generate', *[a.format('generate') for a in tiny], *[a.format('floor') for a in tiny],
          '--generate_prompt=8', '--generate_new_tokens=8', '--generate_repeats=1',
          '--floor_new_tokens=4', '--floor_bandwidth_mib=16']
  out = subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'benchmark.py'), *args],
                       capture_output=True, text=True, check=True, cwd=ROOT).stdout
  result = re.search(
      rf'^RESULT generate ours={NUMBER} peer={NUMBER} unit=tokens/s ratio={NUMBER} '
      rf'agree={NUMBER} per_token_ms={NUMBER} floor_ms={NUMBER} floor_ratio={NUMBER} '
      rf'bandwidth_gbs={NUMBER}$', out, re.M)
  assert result, out
  ours, peer, ratio, agree, _, floor, _, bandwidth = map(float, result.groups())
  assert ours > 0 and peer > 0 and floor > 0 and bandwidth > 0
  assert ratio == pytest.approx(ours / peer, rel=1e-2)
  assert agree == 1.0  # Same weights, greedy: the same tokens, or the speeds are not comparable.
  assert '| new tokens/s |' in out and '| per-token time (ms) |' in out


def test_cfg_image_rate_runs_the_gpu_7b_measurement_on_a_tiny_model():
  sys.path.insert(0, os.path.join(ROOT, 'tools'))
  import benchmark_generate  # pylint: disable=g-import-not-at-top
  fields = benchmark_generate.hf_sizes(1, 64, 2, 96, 256, 128)
  rate = benchmark_generate.cfg_image_rate(fields, 'float32', images=2, tokens_per_image=16,
                                           repeats=1, bandwidth_mib=8, scan_layers=False)
  assert rate['codes_ok']  # Modality control gave every sample one whole image.
  assert rate['ours'] > 0 and rate['floor'] > 0
  assert rate['ratio'] == pytest.approx(rate['floor'] / rate['ours'])
