"""tools/benchmark.py vqgan runs end to end on the tiny tokenizer and prints its RESULT line."""

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_RESULT = re.compile(
    r'^RESULT vqgan ours_encode=([\d.]+) peer_encode=([\d.]+) ours_decode=([\d.]+) '
    r'peer_decode=([\d.]+) unit=images/s encode_ratio=([\d.]+) decode_ratio=([\d.]+)$', re.M)


@pytest.mark.slow
def test_vqgan_benchmark_prints_a_result_line():
  args = ['vqgan', '--vqgan_gin=vqgan/tiny.gin', '--vqgan_batch=2', '--steps=2', '--warmup=1']
  out = subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'benchmark.py'), *args],
                       capture_output=True, text=True, check=True, cwd=ROOT).stdout
  result = _RESULT.search(out)
  assert result, out
  ours_enc, peer_enc, ours_dec, peer_dec, enc_ratio, dec_ratio = map(float, result.groups())
  assert min(ours_enc, peer_enc, ours_dec, peer_dec) > 0
  assert enc_ratio == pytest.approx(ours_enc / peer_enc, rel=1e-2)
  assert dec_ratio == pytest.approx(ours_dec / peer_dec, rel=1e-2)
  # Same weights on both sides: the table reports that the codes agree everywhere.
  assert 'codes agree on 100.00% of positions' in out
  assert re.search(r'^\| encode \|', out, re.M) and re.search(r'^\| decode \|', out, re.M)


def test_unknown_vqgan_gin_file_is_named():
  args = ['vqgan', '--vqgan_gin=vqgan/no_such.gin']
  run = subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'benchmark.py'), *args],
                       capture_output=True, text=True, cwd=ROOT)
  assert run.returncode != 0 and 'no_such.gin' in run.stderr
