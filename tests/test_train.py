"""The trainer: sharded == single device, exact resume after kill -9, multi-process, guards."""

import json
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
from PIL import Image
import pytest

from helpers import ROOT
from cm3leon_jax import gin_utils
from cm3leon_jax.training import checkpoints
from cm3leon_jax import train as train_lib
from cm3leon_jax.data import input_pipeline
from cm3leon_jax.decoding.pretrained import Pretrained
from cm3leon_jax.training.metrics import read_metrics
import shared_data
import tasks

TRAIN_GIN = """
from __gin__ import dynamic_registration
from cm3leon_jax.training import optimizer
from cm3leon_jax import partitioning
from cm3leon_jax import train
from cm3leon_jax.models import config
from cm3leon_jax.data import store_tasks

# The store's 80 documents fill this buffer once; the default 10,000 would have every run first
# push 125 epochs through the CM3 objective before its first batch.
store_tasks.register_store_task.shuffle_buffer_size = 128

train.train:
  model_config = @config.DecoderConfig()
  mixture_or_task_name = 'cm3leon_synthetic'
  task_feature_lengths = {'targets': 64}
  batch_size = 8
  train_steps = 20
  optimizer_config = @optimizer.OptimizerConfig()
  checkpoint_every = 5
  eval_every = 10
  eval_batches = 2
  log_every = 1
  mesh_config = @partitioning.MeshConfig()
  async_checkpoints = False
optimizer.OptimizerConfig:
  peak_learning_rate = 3e-3
  warmup_steps = 4
config.DecoderConfig:
  vocab_size = 512
  num_layers = 2
  embed_dim = 32
  num_heads = 4
  max_length = 64
  dtype = 'float32'
"""


@pytest.fixture(scope='module')
def data_dir(synthetic_data_dir):
  """$CM3LEON_DATA_DIR with a small synthetic store (train 80, validation 20)."""
  tasks.register_standard_tasks(synthetic_data_dir)
  return synthetic_data_dir


@pytest.fixture(scope='module')
def gin_file(tmp_path_factory):
  path = tmp_path_factory.mktemp('gin') / 'train.gin'
  path.write_text(TRAIN_GIN)
  return str(path)


@pytest.fixture(scope='module')
def train_here(data_dir, gin_file):
  """Train TRAIN_GIN (plus gin bindings) in this process: (model_dir, *bindings) -> the final
  validation metrics."""
  def run(model_dir, *bindings):
    gin_utils.parse([gin_file], list(bindings))
    # Registered again once TRAIN_GIN is parsed, so every run reads the task with its shuffle
    # buffer, whatever other tests in this process registered (a resumed run restores the
    # tf.data iterator of the same pipeline).
    tasks.register_standard_tasks(data_dir)
    return train_lib.train(str(model_dir))

  return run


@pytest.fixture(scope='module')
def trained_run(tmp_path_factory, train_here):
  """A 20-step run of TRAIN_GIN (checkpoints 10, 15, 20; sample grids of three images at the
  evaluations, steps 10 and 20) and its final validation metrics, trained once per test run;
  tests that change a run work on a copy."""
  def build(folder):
    final = train_here(folder, 'train.train.sample_images = 3')
    with open(os.path.join(folder, 'final.json'), 'w') as f:
      json.dump(final, f)

  folder = shared_data.cached_folder(tmp_path_factory, 'trained_run', build)
  with open(os.path.join(folder, 'final.json')) as f:
    return pathlib.Path(folder), json.load(f)


def copy_of(run, destination):
  shutil.copytree(run, destination, ignore=shutil.ignore_patterns('final.json', '.complete'))
  return destination


def losses(model_dir, split='train'):
  records = read_metrics(os.path.join(model_dir, 'metrics.jsonl'))
  return np.array([r['loss'] for r in records if r['split'] == split])


def test_a_run_writes_metrics_checkpoints_and_its_gin_config(trained_run):
  tmp_path, final = trained_run
  records = read_metrics(os.path.join(tmp_path, 'metrics.jsonl'))
  train = [r for r in records if r['split'] == 'train']
  assert [r['step'] for r in train] == list(range(1, 21))
  for key in ('loss', 'text_loss', 'image_loss', 'learning_rate', 'grad_norm', 'tokens_per_s',
              'mfu', 'step_time'):
    assert np.isfinite(train[-1][key]), key
  assert train[-1]['loss'] < train[0]['loss']
  assert final['loss'] == losses(tmp_path, 'validation')[-1]
  assert sorted(checkpoints.Checkpointer(str(tmp_path), 5).all_steps()) == [10, 15, 20]
  assert 'train.train' in (tmp_path / 'config.gin').read_text()
  assert 'DecoderConfig' in (tmp_path / 'operative_config.gin').read_text()
  assert list((tmp_path / 'tensorboard' / 'train').iterdir())


def test_sample_grids_and_a_loadable_model_folder(trained_run):
  run = trained_run[0]
  assert sorted(os.listdir(run / 'images')) == ['samples_000010.png', 'samples_000020.png']
  with Image.open(run / 'images' / 'samples_000020.png') as grid:
    assert grid.size == (2 * 34 + 2, 2 * 34 + 2)  # Three 32-px images in 2 x 2 cells.
  # model.json, the vocabulary copy and the checkpoint (in the stored, scanned layout).
  loaded = Pretrained.load(str(run), unroll_layers=False)
  saved = checkpoints.load_params(str(run), jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), loaded.params))
  jax.tree.map(np.testing.assert_array_equal, loaded.params, saved)
  # Restored straight into a mesh layout (scanned or unrolled): the same values, sharded.
  from cm3leon_jax import partitioning  # pylint: disable=g-import-not-at-top
  mesh = partitioning.make_mesh(partitioning.MeshConfig(data=2, fsdp=2, tensor=2))
  for unroll in (False, True):
    on_mesh = Pretrained.load(str(run), unroll_layers=unroll, mesh=mesh)
    reference = Pretrained.load(str(run), unroll_layers=unroll)
    jax.tree.map(np.testing.assert_array_equal, on_mesh.params, reference.params)
    assert on_mesh.params['embed']['token'].sharding.mesh.shape == mesh.shape
  trained_with = input_pipeline.vocabulary('cm3leon_synthetic')  # Equal ids from the copied file:
  assert loaded.vocab.vocab_size == trained_with.vocab_size
  assert loaded.vocab.encode('a red circle') == trained_with.encode('a red circle')
  assert loaded.tokens_per_image == 16


def test_sharded_run_gives_the_single_device_loss_curve(train_here, tmp_path):
  short = ['train.train.train_steps = 10', 'train.train.checkpoint_every = 100',
           'train.train.eval_every = 100']
  train_here(tmp_path / 'one', 'train.train.num_devices = 1',
           'partitioning.MeshConfig.fsdp = 1', *short)
  train_here(tmp_path / 'eight', 'partitioning.MeshConfig.data = 2',
           'partitioning.MeshConfig.fsdp = 2', 'partitioning.MeshConfig.tensor = 2', *short)
  one, eight = losses(tmp_path / 'one'), losses(tmp_path / 'eight')
  assert len(one) == 10
  np.testing.assert_allclose(eight, one, rtol=1e-5)


def test_corrupt_latest_checkpoint_falls_back_to_the_previous_one(trained_run, train_here,
                                                                 tmp_path):
  tmp_path = copy_of(trained_run[0], tmp_path / 'run')
  for path, _, files in os.walk(tmp_path / 'checkpoints' / '20' / 'state'):
    for name in files:
      with open(os.path.join(path, name), 'wb') as f:
        f.write(b'garbage')
  train_here(tmp_path, 'train.train.train_steps = 21')
  steps = [r['step'] for r in read_metrics(os.path.join(tmp_path, 'metrics.jsonl'))
           if r['split'] == 'train']
  assert steps == list(range(1, 22))  # Steps 16-20 were trained again from checkpoint 15.


def test_fine_tuning_starts_from_another_runs_parameters(trained_run, train_here, tmp_path):
  base = trained_run[0]
  train_here(tmp_path / 'tuned', 'train.train.train_steps = 2',
             f"train.train.initial_checkpoint_path = '{base}'")
  fresh_first = losses(base)[0]
  base_last, tuned_first = losses(base)[-1], losses(tmp_path / 'tuned')[0]
  assert abs(tuned_first - base_last) < 0.5 * abs(fresh_first - base_last)


def test_bad_runs_fail_before_any_work_with_one_clear_message(train_here, tmp_path):
  cases = [
      (tmp_path / 'no' / 'such' / 'run', [], 'its parent folder .* does not exist'),
      (tmp_path / 'typo', ["train.train.mixture_or_task_name = 'cm3leon_synthetik'"],
       "Unknown seqio task or mixture 'cm3leon_synthetik'.*cm3leon_synthetic"),
      (tmp_path / 'batch', ['train.train.batch_size = 6', 'partitioning.MeshConfig.data = 2',
                            'partitioning.MeshConfig.fsdp = 2',
                            'partitioning.MeshConfig.tensor = 2'],
       'BATCH_SIZE=6 does not divide .* 4 ways'),
  ]
  for model_dir, bindings, message in cases:
    with pytest.raises(ValueError, match=message):
      train_here(model_dir, *bindings)
    assert not (model_dir / 'checkpoints').exists()


def test_a_checkpoint_of_another_model_shape_names_the_parameter(trained_run, train_here,
                                                                tmp_path):
  copy_of(trained_run[0], tmp_path / 'small')
  wider = ['config.DecoderConfig.embed_dim = 64', 'train.train.train_steps = 25']
  message = r'parameter embed/position is \(64, 32\) there but \(64, 64\) in this config'
  with pytest.raises(checkpoints.CheckpointShapeError, match=message):  # Resuming it.
    train_here(tmp_path / 'small', *wider)
  with pytest.raises(checkpoints.CheckpointShapeError, match=message):  # Fine-tuning from it.
    train_here(tmp_path / 'tuned', *wider,
               f"train.train.initial_checkpoint_path = '{tmp_path / 'small'}'")


def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(
    trained_run, train_here, tmp_path):
  # The 20-step run (checkpoints 10, 15, 20) resumed at a learning rate of 1e30: step 21 still
  # starts from checkpoint 20's finite parameters, whose update then blows them up, so the loss
  # turns non-finite after checkpoint 20 and before checkpoint 25 would be written.
  run = copy_of(trained_run[0], tmp_path / 'run')
  good = _final_params(run, 20)
  assert good and all(np.isfinite(p).all() for p in good)
  with pytest.raises(train_lib.NonFiniteLossError, match=r'Step (\d+): .*not finite') as error:
    train_here(run, 'train.train.train_steps = 30',
               'optimizer.OptimizerConfig.peak_learning_rate = 1e30')
  failed_at = int(re.search(r'Step (\d+)', str(error.value)).group(1))
  assert 20 < failed_at < 25
  # It stopped at the first non-finite step: every step before it logged, all finite.
  train = [r for r in read_metrics(os.path.join(run, 'metrics.jsonl')) if r['split'] == 'train']
  assert [r['step'] for r in train] == list(range(1, failed_at))
  assert np.isfinite([r['loss'] for r in train]).all()
  # Checkpoint 20 is kept, bit for bit, and nothing later was saved.
  assert checkpoints.Checkpointer(str(run), 5).all_steps() == [10, 15, 20]
  kept = _final_params(run, 20)
  assert len(kept) == len(good)
  for before, after in zip(good, kept):
    np.testing.assert_array_equal(before, after)
  # A rerun at the usual rate resumes from it: step 21 sees checkpoint 20's parameters and data
  # position again, so it gets the same loss as step 21 of the failed run.
  step_21 = train[20]['loss']
  train_here(run, 'train.train.train_steps = 21')
  rerun = [r for r in read_metrics(os.path.join(run, 'metrics.jsonl')) if r['split'] == 'train']
  assert [r['step'] for r in rerun] == list(range(1, 22))
  np.testing.assert_allclose(rerun[-1]['loss'], step_21, rtol=1e-6)


def _command(gin_file, model_dir, *bindings):
  return [sys.executable, '-m', 'cm3leon_jax.train', f'--gin_file={gin_file}',
          f"--gin.MODEL_DIR='{model_dir}'"] + [f'--gin.{b}' for b in bindings]


def _env(data_dir, devices=1):
  return dict(os.environ, CM3LEON_DATA_DIR=data_dir, JAX_PLATFORMS='cpu',
              XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}')


def test_a_gin_typo_fails_before_any_work_with_the_file_name(data_dir, gin_file, tmp_path):
  result = subprocess.run(_command(gin_file, tmp_path, 'train.train.bach_size = 3'), cwd=ROOT,
                          env=_env(data_dir), capture_output=True, text=True, timeout=300)
  assert result.returncode != 0
  assert 'bach_size' in result.stderr
  assert not (tmp_path / 'checkpoints').exists()


def _final_params(model_dir, step=20):
  state_dir = os.path.join(model_dir, 'checkpoints', str(step), 'state')
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  return jax.tree.leaves(ocp.PyTreeCheckpointer().restore(state_dir)['params'])


def _kill_at_step(command, env, model_dir, step):
  """Start a run and SIGKILL it once its metrics show `step`."""
  process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
  metrics = os.path.join(model_dir, 'metrics.jsonl')
  deadline = time.time() + 600
  while time.time() < deadline and process.poll() is None:
    if os.path.exists(metrics) and any(r['step'] >= step for r in read_metrics(metrics)):
      break
    time.sleep(0.05)
  process.send_signal(signal.SIGKILL)
  process.wait()


@pytest.fixture(scope='module')
def whole_subprocess_run(tmp_path_factory, data_dir, gin_file):
  """The uninterrupted 20-step run of the trainer's command line, once per test run."""
  def build(folder):
    subprocess.run(_command(gin_file, folder), cwd=ROOT, env=_env(data_dir), check=True,
                   capture_output=True)

  return shared_data.cached_folder(tmp_path_factory, 'whole_subprocess_run', build)


@pytest.mark.slow
def test_kill_9_twice_then_rerun_gives_the_uninterrupted_parameters_bit_for_bit(
    data_dir, gin_file, whole_subprocess_run, tmp_path):
  # Killed at step 7 (after checkpoint 5), rerun, killed again at step 13 of the rerun (after
  # checkpoint 10), rerun to the end: both resumes restore parameters and data position exactly.
  env = _env(data_dir)
  model_dir = tmp_path / 'killed'
  command = _command(gin_file, model_dir)
  for kill_step in (7, 13):
    _kill_at_step(command, env, str(model_dir), kill_step)
    logged = [r['step'] for r in read_metrics(str(model_dir / 'metrics.jsonl'))]
    assert kill_step <= max(logged) < 20  # It ran that far and really was interrupted.
  subprocess.run(command, cwd=ROOT, env=env, check=True, capture_output=True)
  whole, resumed = _final_params(whole_subprocess_run), _final_params(model_dir)
  assert len(whole) == len(resumed) > 0
  for expected, got in zip(whole, resumed):
    np.testing.assert_array_equal(expected, got)


def _free_port():
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_give_the_one_process_loss_curve(data_dir, gin_file, train_here, tmp_path):
  port = _free_port()
  short = ['train.train.train_steps = 10', 'train.train.checkpoint_every = 100']
  processes = [subprocess.Popen(
      _command(gin_file, tmp_path / 'two', *short) + [f'--coordinator_address=localhost:{port}',
                                              '--num_processes=2', f'--process_id={i}'],
      cwd=ROOT, env=_env(data_dir), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
      for i in range(2)]
  outputs = [p.communicate(timeout=900)[0] for p in processes]
  assert all(p.returncode == 0 for p in processes), outputs[0][-3000:] + outputs[1][-3000:]
  # One process on two devices, reading the data as the same two shards.
  train_here(tmp_path / 'one', 'train.train.data_shards = 2', 'train.train.num_devices = 2',
             *short)
  assert len(losses(tmp_path / 'one')) == 10
  np.testing.assert_allclose(losses(tmp_path / 'two'), losses(tmp_path / 'one'), rtol=1e-5)
  assert json.loads(outputs[0].strip().splitlines()[-1])['validation']['loss'] > 0


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_exits_cleanly(data_dir, gin_file, tmp_path):
  command = _command(gin_file, tmp_path, 'train.train.train_steps = 100000',
                     'train.train.checkpoint_every = 100000')
  process = subprocess.Popen(command, cwd=ROOT, env=_env(data_dir), stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
  metrics = os.path.join(tmp_path, 'metrics.jsonl')
  while process.poll() is None and not (os.path.exists(metrics) and read_metrics(metrics)):
    time.sleep(0.1)
  process.send_signal(signal.SIGTERM)
  _, stderr = process.communicate(timeout=300)
  assert process.returncode == 0, stderr[-3000:]
  saved = checkpoints.Checkpointer(str(tmp_path), 100000).all_steps()
  last_logged = max(r['step'] for r in read_metrics(metrics) if r['split'] == 'train')
  assert saved and saved[-1] >= last_logged
