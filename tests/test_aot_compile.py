"""tools/aot_compile.py compiles the real train step for a TPU slice on this CPU host."""

import os
import re

from helpers import run_tool


def aot_compile(*args):
  """The tool's RESULT line as a dict; a subprocess keeps this session's 8 CPU devices apart."""
  out = run_tool(['tools/aot_compile.py', *args], env=dict(os.environ, JAX_PLATFORMS='cpu')).stdout
  lines = [line for line in out.splitlines() if line.startswith('RESULT aot_compile ')]
  assert len(lines) == 1, out
  return dict(re.findall(r'(\w+)=(\S+)', lines[0]))


def test_tiny_step_fits_a_v5p_slice():
  result = aot_compile('--gin_file=models/tiny.gin', '--topology=v5p-8', '--batch_size=8',
                       '--microbatches=2')
  assert result['topology'] == 'v5p:2x2x1'
  assert result['chips'] == '4'
  assert result['mesh'] == '1x4x1'
  assert result['fits'] == 'true'
  assert float(result['per_chip_gib']) < float(result['hbm_gib']) == 95
  assert float(result['step_flops']) > 0 and float(result['xla_flops_per_chip']) > 0
  # The jaxpr count has every matmul of the model (blocked attention: between causal and full).
  assert float(result['step_flops']) >= float(result['model_flops'])


def test_hbm_override_reports_a_misfit():
  result = aot_compile('--gin_file=models/tiny.gin', '--topology=v5p:2x2x1', '--batch_size=8',
                       '--hbm_gib=0.001')
  assert result['fits'] == 'false'
