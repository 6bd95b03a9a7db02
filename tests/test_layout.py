"""The package layout's promises: imports go one way between packages, and the models and the
train step load without TensorFlow or seqio."""

import os
import textwrap

import import_graph
from helpers import ROOT, run_tool

PACKAGES = ('cm3leon_jax', 'tasks')


def _cycle_report(edges, cycle):
  members = set(cycle)
  lines = [f'  {a} -> {b}  ({where})' for a, b, where in edges if a in members and b in members]
  return ' <-> '.join(cycle) + '\n' + '\n'.join(lines)


def test_no_import_cycle_between_packages():
  edges = import_graph.package_edges(ROOT, PACKAGES)
  nodes = {a for a, _, _ in edges} | {b for _, b, _ in edges}
  # The scan sees the layout: every stage's package imports something of the project.
  assert {'cm3leon_jax.data', 'cm3leon_jax.retrieval', 'cm3leon_jax.training',
          'cm3leon_jax.decoding', 'cm3leon_jax.tokenizers', 'tasks'} <= nodes
  found = import_graph.cycles(edges)
  assert not found, 'Import cycles between packages:\n' + '\n'.join(
      _cycle_report(edges, c) for c in found)


def _write(root, path, text):
  full = os.path.join(root, path)
  os.makedirs(os.path.dirname(full), exist_ok=True)
  with open(full, 'w') as f:
    f.write(textwrap.dedent(text))


def test_the_scan_finds_a_planted_cycle_through_a_function_level_import(tmp_path):
  root = str(tmp_path)
  _write(root, 'lib/__init__.py', '')
  _write(root, 'lib/low/__init__.py', '')
  _write(root, 'lib/low/base.py', '''
      def helper():
        from lib.high import user  # the planted back edge
        return user
      ''')
  _write(root, 'lib/high/__init__.py', '')
  _write(root, 'lib/high/user.py', 'from lib.low import base\n')
  _write(root, 'lib/top.py', 'from lib import high\n')
  edges = import_graph.package_edges(root, ('lib',))
  assert ('lib.top', 'lib.high', 'lib/top.py:1') in edges
  assert import_graph.cycles(edges) == [['lib.high', 'lib.low']]


def test_models_and_the_train_step_import_without_tensorflow_or_seqio():
  code = ('import sys\n'
          'import cm3leon_jax.models.decoder, cm3leon_jax.training.state, '
          'cm3leon_jax.training.optimizer, cm3leon_jax.partitioning\n'
          'print(sorted(m for m in ("tensorflow", "seqio", "apache_beam") if m in sys.modules))\n')
  result = run_tool(['-c', code], env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert result.stdout.strip() == '[]', result.stdout + result.stderr
