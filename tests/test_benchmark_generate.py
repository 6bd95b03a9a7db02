"""tools/benchmark.py generate runs end to end on tiny models: both sides ran the flags' model and
prompts and gave the same tokens, and the RESULT line has exactly its keys."""

import pytest

from benchmark_results import run_benchmark, shape
from cm3leon_jax.cli.benchmarks import generate

TINY = ['--{}_layers=1', '--{}_hidden=64', '--{}_heads=2', '--{}_mlp=96', '--{}_vocab=256']


@pytest.mark.slow
def test_generate_benchmark_gives_the_same_tokens_on_both_sides():
  flags = [*[a.format('generate') for a in TINY], *[a.format('floor') for a in TINY],
           '--generate_prompt=8', '--generate_new_tokens=8', '--generate_repeats=1',
           '--floor_new_tokens=4', '--floor_bandwidth_mib=16']
  out, result = run_benchmark('generate', flags)
  assert list(result) == ['ours', 'peer', 'unit', 'ratio', 'agree', 'per_token_ms', 'floor_ms',
                          'floor_ratio', 'bandwidth_gbs', 'ours_tokens', 'peer_tokens',
                          'ours_shape', 'peer_shape']
  assert result['unit'] == 'tokens/s'
  assert min(float(result[k]) for k in ('ours', 'peer', 'floor_ms', 'bandwidth_gbs')) > 0
  expected = {'batch': 2, 'prompt': 8, 'new_tokens': 8, 'layers': 1, 'hidden': 64, 'heads': 2,
              'mlp': 96, 'vocab': 256}
  assert shape(result['ours_shape']) == expected and shape(result['peer_shape']) == expected
  # Same weights, greedy: the same tokens, or the speeds are not comparable.
  assert result['ours_tokens'] == result['peer_tokens']
  assert float(result['agree']) == 1.0
  assert '| new tokens/s |' in out and '| per-token time (ms) |' in out


def test_cfg_image_rate_runs_the_gpu_7b_measurement_on_a_tiny_model():
  fields = generate.hf_sizes(1, 64, 2, 96, 256, 128)
  rate = generate.cfg_image_rate(fields, 'float32', images=2, tokens_per_image=16, repeats=1,
                                 bandwidth_mib=8, scan_layers=False)
  assert rate['shape'] == (2, 1, 17)  # 2 prompts x 1 sample x (16 codes + the closing <break>).
  assert rate['codes_ok']  # Modality control gave every sample one whole image.
  assert rate['ours'] > 0 and rate['floor'] > 0
