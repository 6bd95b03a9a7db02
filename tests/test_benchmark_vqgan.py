"""tools/benchmark.py vqgan runs end to end on the tiny tokenizer: both sides ran the config's
shapes with the same weights (the same codes), and the RESULT line has exactly its keys."""

import re
import subprocess
import sys

import pytest

from benchmark_results import run_benchmark, shape
from cm3leon_jax import gin_utils
from helpers import ROOT


@pytest.mark.slow
def test_vqgan_benchmark_encodes_and_decodes_the_same_shapes_on_both_sides():
  out, result = run_benchmark(
      'vqgan', ['--vqgan_gin=vqgan/tiny.gin', '--vqgan_batch=2', '--steps=2', '--warmup=1'])
  assert list(result) == ['ours_encode', 'peer_encode', 'ours_decode', 'peer_decode', 'unit',
                          'encode_ratio', 'decode_ratio', 'codes_agree', 'ours_shape',
                          'peer_shape']
  assert result['unit'] == 'images/s'
  assert min(float(result[k]) for k in ('ours_encode', 'peer_encode', 'ours_decode',
                                        'peer_decode')) > 0
  config = gin_utils.vqgan_config(['vqgan/tiny.gin'])
  expected = {'batch': 2, 'resolution': config.resolution, 'latent': config.latent_size,
              'decoded': config.resolution}
  assert shape(result['ours_shape']) == expected and shape(result['peer_shape']) == expected
  # Same weights on both sides: the encoders agree on every code.
  assert float(result['codes_agree']) == 1.0
  assert re.search(r'^\| encode \|', out, re.M) and re.search(r'^\| decode \|', out, re.M)


def test_unknown_vqgan_gin_file_is_named():
  run = subprocess.run([sys.executable, 'tools/benchmark.py', 'vqgan',
                        '--vqgan_gin=vqgan/no_such.gin'], capture_output=True, text=True, cwd=ROOT)
  assert run.returncode != 0 and 'no_such.gin' in run.stderr
