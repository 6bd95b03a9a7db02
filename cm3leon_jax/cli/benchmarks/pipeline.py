"""The `pipeline` benchmark: can the input pipeline keep the quickstart fed?

In one run, on the quickstart shapes (the synthetic dataset at 32 px, a 128-piece text vocabulary,
the tiny VQ-GAN of gin/vqgan/tiny.gin, examples of --pipeline_length tokens in batches of
--pipeline_batch, the quickstart decoder below):

* ours: packed seqio batches per second (read the store, assemble, CM3, pack, convert) on one host;
* peer: batches per second a jitted AdamW train step of the quickstart decoder consumes;
* the ratio ours / peer, which must stay well above 1 (the pipeline is not the bottleneck);
* Beam preprocessing images/s (decode, resize, VQ-encode, tokenize, write) with 1 and 2 workers.

Speed does not depend on what the tokenizers learned, so they are built untrained here.
TensorFlow, seqio and Beam are imported inside the functions: the benchmarks' main imports this
module for its flags, and TensorFlow loaded beside torch in one process crashes the torch peers
of the other benchmarks.
"""

import os
import tempfile
import time

from absl import flags
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from cm3leon_jax import cli, gin_utils
from cm3leon_jax.cli.benchmarks import harness
from cm3leon_jax.training.losses import lm_loss
from cm3leon_jax.models.config import DecoderConfig
from cm3leon_jax.models.decoder import Decoder, init_params
from cm3leon_jax.models.vqgan import VQGAN

FLAGS = flags.FLAGS


def define_flags():
  flags.DEFINE_integer('pipeline_documents', 2000, 'Synthetic documents in the benchmark store.')
  flags.DEFINE_integer('pipeline_length', 256,
                       'Tokens per packed example (TASK_FEATURE_LENGTHS).')
  flags.DEFINE_integer('pipeline_batch', 16, 'Examples per batch.')
  flags.DEFINE_integer('pipeline_batches', 100, 'Timed batches of the input pipeline.')
  flags.DEFINE_integer('train_steps', 10, 'Timed train steps.')
  flags.DEFINE_integer('preprocess_images', 1000, 'Images per preprocessing measurement.')

# The quickstart decoder (the shape gin/quickstart.gin trains); the vocabulary comes from the store.
QUICKSTART_DECODER = dict(family='cm3leon', num_layers=4, embed_dim=128, num_heads=4,
                          activation='relu', dtype='float32', attention_impl='blocked',
                          attention_block=64)


def make_tokenizers(directory: str):
  """(text vocabulary path, image tokenizer folder): a 128-piece BPE, an untrained tiny VQ-GAN."""
  # pylint: disable-next=g-import-not-at-top  (sentencepiece: only when asked for)
  from cm3leon_jax.cli import train_text_tokenizer
  from cm3leon_jax.tokenizers.image import ImageTokenizer  # pylint: disable=g-import-not-at-top
  text = train_text_tokenizer.train(train_text_tokenizer.synthetic_captions(2000),
                                    os.path.join(directory, 'text.model'), 128)
  config = gin_utils.vqgan_config(['vqgan/tiny.gin'])
  # Jitted: one compilation instead of one per initializer op.
  params = jax.jit(VQGAN(config).init)(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))['params']
  image = ImageTokenizer(config, params).save(os.path.join(directory, 'image_tokenizer'))
  return text, image


def preprocess_rate(directory: str, tokenizers, workers: int, count: int, split: str) -> float:
  """Images/s of the Beam preprocessing of `count` synthetic pairs with `workers` workers."""
  # pylint: disable-next=g-import-not-at-top
  from apache_beam.options.pipeline_options import PipelineOptions
  from cm3leon_jax.data import preprocess  # pylint: disable=g-import-not-at-top
  from cm3leon_jax.data.sources import SyntheticSource  # pylint: disable=g-import-not-at-top
  mode = 'multi_processing' if workers > 1 else 'in_memory'
  options = PipelineOptions(direct_num_workers=workers, direct_running_mode=mode)
  config = preprocess.PreprocessConfig(os.path.join(directory, split), *tokenizers,
                                       num_read_ranges=16)
  start = time.perf_counter()
  preprocess.run(SyntheticSource(count, split), config, options)
  return count / (time.perf_counter() - start)


def input_pipeline_rate(store_dir: str, length: int, batch: int, num_batches: int):
  """(packed batches/s of the seqio task over the store (after 5 untimed batches), the shape of
  the batches it gave)."""
  import tasks  # pylint: disable=g-import-not-at-top
  from cm3leon_jax.data import store as store_lib  # pylint: disable=g-import-not-at-top
  from cm3leon_jax.data import store_tasks  # pylint: disable=g-import-not-at-top
  from cm3leon_jax.data.seqio_ops import CM3FeatureConverter  # pylint: disable=g-import-not-at-top
  # A buffer of one pass over the store shuffles it fully; the default would first push that
  # many examples through the pipeline on a small store, before the untimed batches.
  documents = store_lib.DocumentStore(os.path.join(store_dir, 'train')).num_documents
  task = tasks.register_store_task(
      'benchmark_pipeline', store_dir,
      shuffle_buffer_size=min(documents, store_tasks.SHUFFLE_BUFFER_SIZE))
  dataset = task.get_dataset({'targets': length}, split='train', shuffle=True, seed=0,
                             num_epochs=None)
  batches = CM3FeatureConverter(pack=True)(dataset, {'targets': length}).batch(batch)
  iterator = batches.prefetch(2).as_numpy_iterator()
  for _ in range(5):
    next(iterator)
  start = time.perf_counter()
  for _ in range(num_batches):
    last = next(iterator)
  rate = num_batches / (time.perf_counter() - start)
  return rate, harness.shape(**_batch_dims(last['decoder_target_tokens']))


def _batch_dims(tokens) -> dict:
  rows, length = tokens.shape
  return dict(batch=rows, length=length)


def train_step_rate(vocab_size: int, length: int, batch: int, steps: int):
  """(batches/s of a jitted AdamW step of the quickstart decoder on one packed-shape batch, the
  shape of that batch)."""
  config = DecoderConfig(vocab_size=vocab_size, max_length=length, **QUICKSTART_DECODER)
  model = Decoder(config)
  params = nn.meta.unbox(init_params(model, jax.random.key(0)))
  optimizer = optax.adamw(1e-3, b1=0.9, b2=0.95, weight_decay=0.1)
  state = (params, optimizer.init(params))
  rng = np.random.default_rng(0)
  tokens = jnp.asarray(rng.integers(1, vocab_size, (batch, length)), jnp.int32)
  positions = jnp.broadcast_to(jnp.arange(length) % (length // 3), (batch, length))
  segments = jnp.broadcast_to(jnp.arange(length) // (length // 3) + 1, (batch, length))

  @jax.jit
  def step(state, tokens):
    params, opt_state = state
    loss_fn = lambda p: lm_loss(model.apply({'params': p}, tokens, positions, segments), tokens)[0]
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), loss

  for _ in range(2):
    state, loss = step(state, tokens)
  jax.block_until_ready(loss)
  start = time.perf_counter()
  for _ in range(steps):
    state, loss = step(state, tokens)
  jax.block_until_ready(loss)
  return steps / (time.perf_counter() - start), harness.shape(**_batch_dims(tokens))


def benchmark() -> str:
  """Run every measurement; prints the table, returns the RESULT line."""
  cli.hide_gpus_from_tensorflow()  # TensorFlow runs the pipeline on the CPU; the GPUs are JAX's.
  from cm3leon_jax.data.store import DocumentStore  # pylint: disable=g-import-not-at-top
  with tempfile.TemporaryDirectory() as directory:
    tokenizers = make_tokenizers(directory)
    store_dir = os.path.join(directory, 'store')
    one = preprocess_rate(store_dir, tokenizers, 1, FLAGS.preprocess_images, 'validation')
    two = preprocess_rate(store_dir, tokenizers, 2, FLAGS.preprocess_images, 'test')
    preprocess_rate(store_dir, tokenizers, 1, FLAGS.pipeline_documents, 'train')
    vocab_size = DocumentStore(os.path.join(store_dir, 'train')).vocabulary().vocab_size
    ours, ours_shape = input_pipeline_rate(store_dir, FLAGS.pipeline_length,
                                           FLAGS.pipeline_batch, FLAGS.pipeline_batches)
  peer, peer_shape = train_step_rate(vocab_size, FLAGS.pipeline_length, FLAGS.pipeline_batch,
                                     FLAGS.train_steps)
  shape = f'{FLAGS.pipeline_batch} x {FLAGS.pipeline_length} tokens'
  table = '\n'.join([
      harness.shapes_line(ours_shape, peer_shape),
      '',
      f'| measurement ({shape}, {len(os.sched_getaffinity(0))} CPUs) | rate |',
      '|---|---|',
      f'| seqio input pipeline (packed CM3 batches) | {ours:.1f} batches/s |',
      f'| quickstart train step (AdamW, vocab {vocab_size}) | {peer:.1f} batches/s |',
      f'| pipeline / training | {harness.ratio(ours, peer):.1f}x |',
      f'| Beam preprocessing, 1 worker | {one:.1f} images/s |',
      f'| Beam preprocessing, 2 workers (multi_processing) | {two:.1f} images/s |',
  ])
  print(table)
  return harness.result_line(
      'pipeline', ours=f'{ours:.2f}', peer=f'{peer:.2f}', unit='batches/s',
      ratio=f'{harness.ratio(ours, peer):.2f}', preprocess_1_worker=f'{one:.1f}',
      preprocess_2_workers=f'{two:.1f}', preprocess_unit='images/s', ours_shape=ours_shape,
      peer_shape=peer_shape)
