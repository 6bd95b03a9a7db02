"""tools/eval_fid.py end to end on a tiny random model, tfds mock COCO and random Inception weights
in pytorch-fid's format: it checks the pipeline (not the number), resuming after kill -9, two
processes against one, and its messages on bad input."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

import eval_helpers
from helpers import ROOT

# The tool inside tfds.testing.mock_data: COCO's splits then hold random examples (6 each).
_MOCK_COCO_RUN = (
    'import sys\n'
    'import tensorflow_datasets as tfds\n'
    'from cm3leon_jax.cli import eval_fid\n'
    'with tfds.testing.mock_data(num_examples=6):\n'
    '  eval_fid.run()\n')


@pytest.fixture(scope='module')
def parts(tmp_path_factory, shared_tokenizers):
  return eval_helpers.shared_parts(tmp_path_factory, shared_tokenizers)


def _args(parts, output_dir, *extra):
  return [f'--checkpoint={parts["model"]}', f'--inception={parts["inception"]}',
          f'--rerank_clip={parts["rerank_clip"]}', f'--metric_clip={parts["metric_clip"]}',
          f'--output_dir={output_dir}', f'--reference_cache={parts["reference_cache"]}',
          '--source=coco', '--num_captions=6', '--num_samples=2', '--shard_size=2',
          '--batch_prompts=2', '--feature_batch=8', '--kid_subsets=5', '--kid_subset_size=4',
          '--mesh_fsdp=1', *extra]


def _env():
  # One device per process: the two-process test then runs the same mesh as one process.
  return dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS='--xla_force_host_platform_device_count=1')


def _popen(args):
  return subprocess.Popen([sys.executable, '-c', _MOCK_COCO_RUN, *args], cwd=ROOT, env=_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _run(args):
  """Run the tool to completion; it must succeed. (returncode, stdout, stderr)."""
  process = _popen(args)
  out, err = process.communicate(timeout=900)
  assert process.returncode == 0, err[-3000:]
  return process.returncode, out, err


def _result(output_dir):
  with open(os.path.join(output_dir, 'result.json')) as f:
    return json.load(f)


@pytest.fixture(scope='module')
def whole_run(parts, tmp_path_factory):
  """One uninterrupted single-process run: (output_dir, its result)."""
  output_dir = tmp_path_factory.mktemp('fid') / 'whole'
  # pytorch-fid's form of the distance (scipy's sqrtm, ~20 s on one thread at 2048 dimensions) is
  # checked against pytorch-fid in tests/test_fid_statistics.py; the tool runs skip it.
  _run(_args(parts, output_dir, '--nopytorch_fid_form'))
  return output_dir, _result(output_dir)


@pytest.mark.slow
def test_one_run_measures_every_caption_and_records_the_protocol(whole_run):
  output_dir, result = whole_run
  metrics = result['metrics']
  for space in ('fid', 'fd_clip'):
    assert metrics[space]['num_images'] == 6
    assert np.isfinite(metrics[space]['frechet_distance_eigh'])
    assert metrics[space]['frechet_distance_eigh'] > 0
    assert metrics[space]['kid']['subsets'] == 5 and metrics[space]['kid']['subset_size'] == 4
    assert 'frechet_distance' not in metrics[space]  # --nopytorch_fid_form
  assert 0 <= metrics['clip_score'] <= 100
  counts = result['counts']
  assert counts['captions_evaluated'] == 6 and counts['samples_drawn'] == 12
  protocol = result['protocol']
  assert protocol['source']['tfds_splits'] == ['val', 'test', 'restval']
  assert protocol['samples_per_caption'] == 2 and protocol['resolution'] == 32
  assert 'LANCZOS' in protocol['reference']['preprocessing']
  assert result['software']['jax'] and result['settings']['num_samples'] == 2
  # The reference is every val2014 image the mock holds (3 splits x 6), cached once.
  with np.load(protocol['reference']['files']['inception']) as reference:
    assert int(reference['num_images']) == 18 and reference['features'].shape == (18, 2048)
  assert sorted(os.listdir(output_dir / 'shards')) == [f'shard_{i:05d}.npz' for i in range(3)]


def _free_port():
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_a_run_killed_half_way_and_resumed_on_two_processes_gives_the_same_result(
    parts, whole_run, tmp_path):
  output_dir = tmp_path / 'killed'
  process = _popen(_args(parts, output_dir, '--nopytorch_fid_form'))
  shards = output_dir / 'shards'
  while process.poll() is None and not (shards.exists() and any(
      n.endswith('.npz') and not n.endswith('.partial.npz') for n in os.listdir(shards))):
    time.sleep(0.2)
  process.send_signal(signal.SIGKILL)
  process.communicate()
  finished = sorted(n for n in os.listdir(shards) if not n.endswith('.partial.npz'))
  assert 1 <= len(finished) < 3, finished  # Really interrupted half-way.
  written = {n: os.stat(shards / n).st_mtime_ns for n in finished}
  port = _free_port()
  processes = [_popen(_args(parts, output_dir, '--nopytorch_fid_form',
                            f'--coordinator_address=localhost:{port}', '--num_processes=2',
                            f'--process_id={i}')) for i in range(2)]
  outputs = [p.communicate(timeout=900) for p in processes]
  assert all(p.returncode == 0 for p in processes), outputs[0][1][-2000:] + outputs[1][1][-2000:]
  assert 'of its shards done before' in outputs[0][1] + outputs[1][1]
  resumed, whole = _result(output_dir), whole_run[1]
  assert resumed['counts']['processes'] == 2
  # The shards finished before the kill were kept, not made again.
  assert {n: os.stat(shards / n).st_mtime_ns for n in finished} == written
  for space in ('fid', 'fd_clip'):
    assert resumed['metrics'][space]['frechet_distance_eigh'] == pytest.approx(
        whole['metrics'][space]['frechet_distance_eigh'], rel=1e-9)
    assert 'frechet_distance' not in resumed['metrics'][space]
  assert resumed['metrics']['clip_score'] == pytest.approx(whole['metrics']['clip_score'],
                                                           rel=1e-9, abs=1e-12)
  for shard in range(3):  # Every sample and its features are the same.
    with np.load(shards / f'shard_{shard:05d}.npz') as a, \
        np.load(whole_run[0] / 'shards' / f'shard_{shard:05d}.npz') as b:
      np.testing.assert_array_equal(a['inception'], b['inception'])


@pytest.mark.slow
def test_empty_caption_lines_and_too_few_captions_are_named(parts, whole_run, tmp_path):
  # Missing Inception weights and reference statistics of another width are named by the
  # functions the tool calls (tests/test_inception.py, tests/test_fid_statistics.py).
  # Fewer captions than asked: a warning naming the count, and the count in the result.
  captions = tmp_path / 'captions.txt'
  captions.write_text('a red circle\n\na blue square\n   \na green triangle\n')
  output_dir = tmp_path / 'short'
  _, _, err = _run(_args(parts, output_dir, '--source=captions', f'--captions_file={captions}',
                         '--reference_stats=' + whole_run[1]['protocol']['reference']['files'][
                             'inception'], '--num_captions=5', '--metric_clip=', '--shard_size=5',
                         '--nopytorch_fid_form'))
  assert 'skipped 2 empty caption lines (lines 2, 4)' in err
  assert 'Only 3 captions are available of the 5' in err
  assert _result(output_dir)['counts']['captions_evaluated'] == 3
