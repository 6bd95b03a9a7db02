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

import fid_helpers
import shared_data
from helpers import ROOT, model_and_params, tiny_config
from cm3leon_jax.interop import pytorch_fid

# The tool inside tfds.testing.mock_data: COCO's splits then hold random examples (12 each).
_MOCK_COCO_RUN = (
    'import sys\n'
    'import tensorflow_datasets as tfds\n'
    'from cm3leon_jax.cli import eval_fid\n'
    'with tfds.testing.mock_data(num_examples=12):\n'
    '  eval_fid.run()\n')


def _random_clip(directory, seed):
  """A random-weight CLIP folder (the pipeline needs a CLIP, not a good one)."""
  import jax  # pylint: disable=g-import-not-at-top
  from cm3leon_jax.cli import train_clip  # pylint: disable=g-import-not-at-top
  from cm3leon_jax.interop import hf_clip  # pylint: disable=g-import-not-at-top
  from cm3leon_jax.models.clip import CLIP  # pylint: disable=g-import-not-at-top
  images, captions, _ = train_clip.synthetic_pairs(0, 16, 32)
  tokenizer = train_clip.build_tokenizer(captions, 20)
  config = train_clip.clip_config(tokenizer, 32, 8, 32, 1, 16, 20)
  ids, mask = train_clip.encode_texts(tokenizer, captions[:1], 20)
  pixels = hf_clip.preprocess_images(images[:1], config)
  params = jax.jit(CLIP(config).init)(jax.random.key(seed), pixels, ids, mask)['params']
  train_clip.save(directory, config, params, 1.0, tokenizer, 20)


@pytest.fixture(scope='module')
def parts(tmp_path_factory, shared_tokenizers):
  """(exported tiny model, two CLIPs, Inception weights): built once per test run."""
  torch_home = fid_helpers.shared_torch_home(tmp_path_factory)

  def build(folder):
    from cm3leon_jax.data import objective  # pylint: disable=g-import-not-at-top
    from cm3leon_jax.data.store import text_vocabulary  # pylint: disable=g-import-not-at-top
    from cm3leon_jax.decoding.export import export_model  # pylint: disable=g-import-not-at-top
    from cm3leon_jax.decoding.pretrained import Pretrained  # pylint: disable=g-import-not-at-top
    from cm3leon_jax.tokenizers.multimodal import MultimodalVocabulary  # pylint: disable=g-import-not-at-top
    text, image_tokenizer = shared_tokenizers
    vocab = MultimodalVocabulary(text_vocabulary(text), num_image_codes=64, num_sentinels=8)
    model, params = model_and_params(tiny_config(vocab_size=vocab.vocab_size, max_length=96))
    export_model(Pretrained(model, params, vocab, objective.CM3Config(), image_tokenizer, folder),
                 os.path.join(folder, 'model'))
    for name, seed in (('rerank_clip', 0), ('metric_clip', 1)):
      _random_clip(os.path.join(folder, name), seed)

  folder = shared_data.cached_folder(tmp_path_factory, 'eval_fid_parts', build)
  return {'model': os.path.join(folder, 'model'), 'rerank_clip': os.path.join(folder, 'rerank_clip'),
          'metric_clip': os.path.join(folder, 'metric_clip'),
          # The safetensors conversion: the tool then reads the weights without torch.
          'inception': os.path.join(torch_home, fid_helpers.SAFETENSORS_NAME),
          'reference_cache': str(tmp_path_factory.mktemp('reference_cache'))}


def _args(parts, output_dir, *extra):
  return [f'--checkpoint={parts["model"]}', f'--inception={parts["inception"]}',
          f'--rerank_clip={parts["rerank_clip"]}', f'--metric_clip={parts["metric_clip"]}',
          f'--output_dir={output_dir}', f'--reference_cache={parts["reference_cache"]}',
          '--source=coco', '--num_captions=12', '--num_samples=2', '--shard_size=3',
          '--batch_prompts=3', '--feature_batch=8', '--kid_subsets=5', '--kid_subset_size=6',
          '--mesh_fsdp=1', *extra]


def _env():
  # One device per process: the two-process test then runs the same mesh as one process.
  return dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS='--xla_force_host_platform_device_count=1')


def _popen(args):
  return subprocess.Popen([sys.executable, '-c', _MOCK_COCO_RUN, *args], cwd=ROOT, env=_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _run(args, expect_ok=True):
  process = _popen(args)
  out, err = process.communicate(timeout=900)
  if expect_ok:
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
    assert metrics[space]['num_images'] == 12
    assert np.isfinite(metrics[space]['frechet_distance_eigh'])
    assert metrics[space]['frechet_distance_eigh'] > 0
    assert metrics[space]['kid']['subsets'] == 5 and metrics[space]['kid']['subset_size'] == 6
    assert 'frechet_distance' not in metrics[space]  # --nopytorch_fid_form
  assert 0 <= metrics['clip_score'] <= 100
  counts = result['counts']
  assert counts['captions_evaluated'] == 12 and counts['samples_drawn'] == 24
  protocol = result['protocol']
  assert protocol['source']['tfds_splits'] == ['val', 'test', 'restval']
  assert protocol['samples_per_caption'] == 2 and protocol['resolution'] == 32
  assert 'LANCZOS' in protocol['reference']['preprocessing']
  assert result['software']['jax'] and result['settings']['num_samples'] == 2
  # The reference is every val2014 image the mock holds (3 splits x 12), cached once.
  with np.load(protocol['reference']['files']['inception']) as reference:
    assert int(reference['num_images']) == 36 and reference['features'].shape == (36, 2048)
  assert sorted(os.listdir(output_dir / 'shards')) == [f'shard_{i:05d}.npz' for i in range(4)]


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
  assert 1 <= len(finished) < 4, finished  # Really interrupted half-way.
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
  for shard in range(4):  # Every sample and its features are the same.
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
