r"""Train a CM3Leon decoder from gin configs, on one CPU or a TPU pod.

  python -m cm3leon_jax.train --gin_file=gin/quickstart.gin --gin.MODEL_DIR="'/tmp/run'"
  python -m cm3leon_jax.train --gin_file=models/cm3leon_760m.gin --gin_file=runs/pretrain_760m_v5p.gin \
      --gin.MODEL_DIR="'gs://bucket/run'"

``train()`` reads top to bottom: mesh, model, optimizer, data, restore (or initialise), then the
loop: step, log, evaluate, checkpoint. Running the same command again resumes from the newest good
checkpoint in MODEL_DIR with the data iterator where it was, so a killed run ends with the same
parameters as an uninterrupted one. Gin files and bindings are parsed before anything is built, so
a typo fails at once with gin's message and the file name.
"""

import json
import math
import os
import sys
import time
from typing import Dict, Mapping, Optional, Sequence

from absl import app, flags, logging
import gin
import jax
import numpy as np

# cli first: importing it sets up the process's logging (TF's INFO lines, orbax's INFO lines,
# known harmless library warnings) before TensorFlow is imported.
from cm3leon_jax import cli  # pylint: disable=g-bad-import-order
from cm3leon_jax.cli import distributed
from cm3leon_jax import flops, gin_utils, partitioning
from cm3leon_jax.training import checkpoints
from cm3leon_jax.data import objective
from cm3leon_jax.decoding import pretrained
from cm3leon_jax.training import optimizer as optimizer_lib
from cm3leon_jax.training import state as state_lib
from cm3leon_jax.evaluation import training_samples
from cm3leon_jax.data import input_pipeline
from cm3leon_jax.models.config import DecoderConfig
from cm3leon_jax.models.decoder import Decoder
from cm3leon_jax.training.metrics import MetricsLogger

FLAGS = flags.FLAGS


def _define_flags():
  """The command line's flags; defined on first use because the module also runs as __main__."""
  if 'gin_file' in FLAGS:
    return
  flags.DEFINE_multi_string('gin_file', [], 'Gin files (searched in gin/ too).')
  flags.DEFINE_multi_string('gin_bindings', [], 'Gin bindings; --gin.NAME=VALUE also works.')
  distributed.define_flags()


class NonFiniteLossError(FloatingPointError):
  """The loss (or another metric) became NaN or inf; the run stops with its last good checkpoint."""


def _check_finite(step: int, metrics: Mapping[str, float]) -> None:
  bad = [k for k in ('loss', 'grad_norm') if k in metrics and not math.isfinite(metrics[k])]
  if bad:
    raise NonFiniteLossError(
        f'Step {step}: {", ".join(f"{k}={metrics[k]}" for k in bad)} is not finite. The run stops; '
        'its last checkpoint holds the last good state. Lower the learning rate or check the data.')


def _write_gin_config(model_dir: str, name: str, text: str) -> None:
  if jax.process_index() == 0:
    with open(os.path.join(model_dir, name), 'w', encoding='utf-8') as f:
      f.write(text)


def _initial_state(model, optimizer, mesh, seed, initial_checkpoint_path, abstract, shardings):
  """A new state; with INITIAL_CHECKPOINT_PATH its parameters come from that run (fine-tuning)."""
  state, _ = state_lib.init_train_state(model, optimizer, mesh, seed)
  if initial_checkpoint_path:
    params = checkpoints.load_params(
        initial_checkpoint_path, state_lib.with_shardings(abstract.params, shardings.params))
    state = state.replace(params=params, opt_state=jax.jit(
        optimizer.init, out_shardings=shardings.opt_state)(params))
    logging.info('Parameters loaded from %s.', initial_checkpoint_path)
  return state


def evaluate(eval_step, params, dataset, sharding, num_batches: int) -> Dict[str, float]:
  """Validation metrics over the first `num_batches` batches of `dataset` (same ones every time)."""
  totals = None
  for i, batch in enumerate(dataset.as_numpy_iterator()):
    if i == num_batches:
      break
    sums = jax.device_get(eval_step(params, input_pipeline.to_global(batch, sharding)))
    totals = sums if totals is None else jax.tree.map(np.add, totals, sums)
  if totals is None:
    raise ValueError('The validation split gave no batch: lower BATCH_SIZE or add data.')
  return state_lib.eval_metrics(totals)


def _check_model_dir(model_dir: str) -> None:
  """A local MODEL_DIR's parent must exist: a missing one is most likely a typo in the path."""
  if '://' in model_dir:
    return
  parent = os.path.dirname(os.path.abspath(model_dir))
  if not os.path.isdir(parent):
    raise ValueError(f'MODEL_DIR {model_dir!r}: its parent folder {parent} does not exist. '
                     'Create it, or fix the path.')


def _check_batch_size(batch_size: int, mesh) -> None:
  """The batch is split over the 'data' and 'fsdp' mesh axes, so it must divide evenly."""
  ways = mesh.shape['data'] * mesh.shape['fsdp']
  if batch_size % ways:
    raise ValueError(f'BATCH_SIZE={batch_size} does not divide over the mesh\'s data x fsdp = '
                     f'{mesh.shape["data"]} x {mesh.shape["fsdp"]} = {ways} ways; use a multiple '
                     f'of {ways}.')


def _write_model_files(model_dir, model_config, mixture_or_task_name, vocab):
  """model.json and the text vocabulary: what samplers load besides the checkpoint."""
  from cm3leon_jax.data import store_tasks as stores  # pylint: disable=g-import-not-at-top
  info = stores.task_store_info(mixture_or_task_name)
  image_tokenizer, cm3, loss_on = None, objective.CM3Config(), 'all'
  if info is not None:
    image_tokenizer, cm3, loss_on = info.image_tokenizer, info.assembly.cm3, info.assembly.loss_on
  pretrained.write_model_files(model_dir, model_config, vocab, image_tokenizer, cm3,
                               loss_on=loss_on)


@gin.configurable(denylist=['model_dir'])
def train(model_dir: str,
          model_config: DecoderConfig = gin.REQUIRED,
          mixture_or_task_name: str = gin.REQUIRED,
          task_feature_lengths: Mapping[str, int] = gin.REQUIRED,
          batch_size: int = gin.REQUIRED,
          train_steps: int = gin.REQUIRED,
          optimizer_config: optimizer_lib.OptimizerConfig = optimizer_lib.OptimizerConfig(),
          microbatches: int = 1,
          z_loss: float = 0.0,
          mesh_config: partitioning.MeshConfig = partitioning.MeshConfig(),
          checkpoint_every: int = 1000,
          keep_checkpoints: Optional[int] = 3,
          eval_every: int = 1000,
          eval_batches: int = 10,
          eval_split: str = 'validation',
          log_every: int = 10,
          seed: int = 0,
          data_seed: int = 0,
          initial_checkpoint_path: Optional[str] = None,
          use_cached_tasks: bool = False,
          data_shards: Optional[int] = None,
          num_devices: Optional[int] = None,
          async_checkpoints: bool = True,
          sample_images: int = 0) -> Dict[str, float]:
  """Train until `train_steps` (resuming from MODEL_DIR); returns the last validation metrics.

  Args:
    model_dir: where checkpoints, metrics and the gin configs go (the MODEL_DIR macro).
    model_config: the decoder (its vocab_size must cover the data's vocabulary).
    mixture_or_task_name: a registered seqio task or mixture (see tasks/).
    task_feature_lengths: {'targets': tokens per packed example}.
    batch_size: global examples per step, split over processes and data shards.
    train_steps: the step to stop at (the schedule decays to it).
    optimizer_config: AdamW and schedule settings.
    microbatches: gradient accumulation slices per step.
    z_loss: z-loss coefficient.
    mesh_config: the ('data', 'fsdp', 'tensor') mesh.
    checkpoint_every, keep_checkpoints: save interval and how many to keep.
    eval_every, eval_batches, eval_split: validation schedule (the same batches every time).
    log_every: steps between metric writes (and NaN checks).
    seed, data_seed: parameter initialisation and data order/masking.
    initial_checkpoint_path: start from another run's parameters (not its optimizer state).
    use_cached_tasks: read seqio's Beam cache (USE_CACHED_TASKS).
    data_shards: seqio shards the data is read in (default: one per process).
    num_devices: use only the first devices (tests; default all).
    async_checkpoints: write checkpoints in the background.
    sample_images: at each evaluation, draw this many images from the evaluation split's first
      captions (CFG 3, top-p 0.9) into a grid in TensorBoard and <model_dir>/images/ (0: off;
      single-process runs of store tasks only).
  """
  _check_model_dir(model_dir)
  mesh = partitioning.make_mesh(mesh_config, jax.devices()[:num_devices])
  _check_batch_size(batch_size, mesh)
  import tasks  # pylint: disable=g-import-not-at-top,unused-import  (registers the standard tasks)
  input_pipeline.check_registered(mixture_or_task_name)
  os.makedirs(model_dir, exist_ok=True)
  _write_gin_config(model_dir, 'config.gin', gin.config_str())
  model = Decoder(model_config)
  schedule = optimizer_lib.learning_rate_schedule(optimizer_config, train_steps)
  optimizer = optimizer_lib.make_optimizer(optimizer_config, train_steps)
  length = task_feature_lengths['targets']

  train_data = input_pipeline.make_dataset(mixture_or_task_name, task_feature_lengths, batch_size,
                                           seed=data_seed, use_cached=use_cached_tasks,
                                           num_shards=data_shards)
  train_iterator = iter(train_data)
  eval_data = input_pipeline.make_dataset(mixture_or_task_name, task_feature_lengths, batch_size,
                                          split=eval_split, shuffle=False, num_epochs=1,
                                          use_cached=use_cached_tasks, num_shards=data_shards)
  vocab = input_pipeline.vocabulary(mixture_or_task_name)
  if model_config.vocab_size < vocab.vocab_size:
    raise ValueError(f'The model has vocab_size={model_config.vocab_size}, but the data of '
                     f'{mixture_or_task_name!r} uses {vocab.vocab_size} ids; set '
                     f'DecoderConfig.vocab_size >= {vocab.vocab_size}.')
  step_config = state_lib.StepConfig(microbatches, z_loss, vocab.first_image_id,
                                     vocab.num_image_codes)
  if jax.process_index() == 0:
    _write_model_files(model_dir, model_config, mixture_or_task_name, vocab)

  abstract, shardings = state_lib.abstract_train_state(model, optimizer, mesh)
  checkpointer = checkpoints.Checkpointer(model_dir, checkpoint_every, keep_checkpoints,
                                          async_checkpoints)
  state, start = checkpointer.restore_latest(state_lib.with_shardings(abstract, shardings),
                                             train_iterator)
  if state is None:
    state, start = _initial_state(model, optimizer, mesh, seed, initial_checkpoint_path,
                                  abstract, shardings), 0

  train_step = state_lib.jit_train_step(
      state_lib.make_train_step(model, optimizer, schedule, step_config), mesh, shardings)
  eval_step = jax.jit(state_lib.make_eval_step(model, step_config))
  batch_sharding = state_lib.batch_sharding(mesh)
  logger = MetricsLogger(model_dir, train_steps, is_primary=jax.process_index() == 0)
  peak = flops.peak_flops_per_device(jax.devices()[0])
  flops_per_token = flops.training_flops_per_token(model_config, length)
  preemption = checkpoints.PreemptionFlag()
  samples = (training_samples.TrainingSamples.for_task(
      model, vocab, mixture_or_task_name, eval_split, sample_images, model_dir)
             if jax.process_count() == 1 else None)

  eval_metrics, window_start, window_steps = {}, time.perf_counter(), 0
  for step in range(start, train_steps):
    batch = input_pipeline.to_global(next(train_iterator), batch_sharding)
    state, metrics = train_step(state, batch)
    done = step + 1
    window_steps += 1
    if done == start + 1:
      _write_gin_config(model_dir, 'operative_config.gin', gin.operative_config_str())
    if done % log_every == 0 or done == train_steps:
      metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
      _check_finite(done, metrics)
      seconds = (time.perf_counter() - window_start) / window_steps
      tokens_per_s = batch_size * length / seconds
      metrics.update(step_time=seconds, tokens_per_s=tokens_per_s,
                     mfu=flops_per_token * tokens_per_s / jax.device_count() / peak)
      logger.write(done, metrics)
      window_start, window_steps = time.perf_counter(), 0
    if done % eval_every == 0 or done == train_steps:
      eval_metrics = evaluate(eval_step, state.params, eval_data, batch_sharding, eval_batches)
      logger.write(done, eval_metrics, split='validation')
      if samples is not None:
        logger.write_images(done, 'samples', samples(state.params))
    if checkpointer.should_save(done) or preemption.is_set() or done == train_steps:
      _check_finite(done, {'loss': float(metrics['loss'])})
      checkpointer.save(done, state, train_iterator, force=True)
    if preemption.is_set():
      break
  checkpointer.close()
  logger.close()
  preemption.restore_handler()
  return eval_metrics


def _gin_dot_bindings(argv: Sequence[str]):
  """t5x's --gin.NAME=VALUE arguments become gin bindings; the rest stays for absl."""
  rest, bindings = [], []
  for arg in argv:
    if arg.startswith('--gin.'):
      bindings.append(arg[len('--gin.'):])
    else:
      rest.append(arg)
  return rest, bindings


def main(argv, extra_bindings=()):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  distributed.initialize()
  # Parse (and fail on typos) before any data or compilation work starts.
  gin_utils.parse(FLAGS.gin_file, list(FLAGS.gin_bindings) + list(extra_bindings))
  try:
    model_dir = gin.query_parameter('%MODEL_DIR')
  except ValueError:
    raise app.UsageError("No MODEL_DIR: pass --gin.MODEL_DIR=\"'/path/to/run'\".") from None
  final = train(model_dir)
  if jax.process_index() == 0:
    print(json.dumps({'model_dir': model_dir, 'validation': final}), flush=True)


def run():
  """Console entry point: accepts --gin.NAME=VALUE as t5x does."""
  _define_flags()
  argv, bindings = _gin_dot_bindings(sys.argv)
  cli.hide_gpus_from_tensorflow()  # Before any TF op: the input pipeline's TF stays on the CPU.
  app.run(lambda a: main(a, bindings), argv=argv)


if __name__ == '__main__':
  # Run the importable module, not this __main__ copy, so that gin files importing
  # cm3leon_jax.train configure the same `train` that runs.
  from cm3leon_jax import train as train_module  # pylint: disable=import-self
  train_module.run()
