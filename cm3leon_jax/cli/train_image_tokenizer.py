r"""Train the VQ-GAN image tokenizer, on synthetic images or a folder of any images.

  python tools/train_image_tokenizer.py --output_dir=/tmp/vq                      # tiny, synthetic
  python tools/train_image_tokenizer.py --source=folder --image_folder=photos --output_dir=...

Losses: L1 (or L2) reconstruction + the quantizer's commitment + beta * codebook terms, plus an
optional PatchGAN hinge loss (--discriminator_weight > 0, from --discriminator_start on). Every
--dead_code_every steps, codes unused since the previous check are moved onto encoder outputs of
the current batch, so the codebook keeps being used. At the end the tokenizer is evaluated on
held-out synthetic examples (PSNR, codebook usage, perplexity and the synthetic judge's agreement
between original and reconstruction), the metrics are written to output_dir/metrics.json and the
tokenizer to output_dir/tokenizer (load it with ``ImageTokenizer.load``).
"""

import json
import os
import time
from typing import Dict, List, Optional, Tuple

from absl import app, flags, logging
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from cm3leon_jax import cli
from cm3leon_jax import gin_utils
from cm3leon_jax.data import images as image_io
from cm3leon_jax.data.synthetic import SyntheticConfig, SyntheticDataset
from cm3leon_jax.evaluation.synthetic_judge import agrees_with_truth
from cm3leon_jax.tokenizers.image import ImageTokenizer
from cm3leon_jax.models.vqgan import VQGAN
from cm3leon_jax.models.vqgan_config import VQGANConfig

_GIN_FILE = flags.DEFINE_multi_string('gin_file', ['gin/vqgan/tiny.gin'],
                                      'Gin files binding the VQGAN_CONFIG macro.')
_GIN_BINDINGS = flags.DEFINE_multi_string('gin_bindings', [], 'Extra gin bindings.')
_OUTPUT_DIR = flags.DEFINE_string('output_dir', None, 'Where metrics and the tokenizer go.')
_STEPS = flags.DEFINE_integer('steps', 1800, 'Training steps.')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 16, 'Images per step.')
_LEARNING_RATE = flags.DEFINE_float('learning_rate', 3e-3, 'Peak Adam learning rate.')
_WARMUP_STEPS = flags.DEFINE_integer('warmup_steps', 100, 'Linear warm-up steps.')
_RECONSTRUCTION = flags.DEFINE_enum('reconstruction_loss', 'l1', ['l1', 'l2'],
                                    'Pixel reconstruction loss.')
_SOURCE = flags.DEFINE_enum('source', 'synthetic', ['synthetic', 'folder'], 'Training images.')
_IMAGE_FOLDER = flags.DEFINE_string('image_folder', None, 'Folder of images for --source=folder.')
_POOL_SIZE = flags.DEFINE_integer('pool_size', 8000,
                                  'Synthetic training images generated up front and sampled from.')
_DISC_WEIGHT = flags.DEFINE_float('discriminator_weight', 0.0,
                                  'Weight of the PatchGAN generator loss; 0 turns it off.')
_DISC_START = flags.DEFINE_integer('discriminator_start', 1000,
                                   'Step from which the discriminator trains and is used.')
_DEAD_CODE_EVERY = flags.DEFINE_integer('dead_code_every', 100,
                                        'Steps between dead-code resets; 0 turns them off.')
_DEAD_CODE_UNTIL = flags.DEFINE_float('dead_code_until', 0.8,
                                      'Fraction of training after which codes are no longer reset '
                                      '(so the last updates settle the codebook).')
_LOG_EVERY = flags.DEFINE_integer('log_every', 100, 'Steps between progress logs.')
_EVAL_EXAMPLES = flags.DEFINE_integer('eval_examples', 500, 'Held-out synthetic examples.')
_EVAL_START = flags.DEFINE_integer('eval_start', 1_000_000,
                                   'First held-out synthetic index (beyond the training range).')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of the initialisation and batch sampling.')

State = Dict[str, object]


# ----------------------------------------------------------------------------- data

def synthetic_pool(count: int, resolution: int, start: int = 0) -> np.ndarray:
  """Synthetic images start..start+count-1 as uint8 [count, R, R, 3]."""
  dataset = SyntheticDataset(SyntheticConfig(resolution=resolution))
  return np.stack([e.image for e in dataset.examples(start, count)])


def folder_pool(folder: str, resolution: int) -> Tuple[np.ndarray, List[Tuple[str, str]]]:
  """Every readable image under `folder` as uint8 [N, R, R, 3], and (path, error) of skipped files.

  Any file may be broken in a scraped folder; one bad file should cost a log line, not the run.
  """
  paths = sorted(os.path.join(root, name) for root, _, names in os.walk(folder) for name in names)
  arrays, skipped = [], []
  for path in paths:
    try:
      arrays.append(image_io.postprocess(image_io.preprocess(image_io.load_image(path),
                                                              resolution)))
    except image_io.ImageError as e:
      skipped.append((path, str(e)))
  if not arrays:
    raise ValueError(f'No readable image in {folder} ({len(skipped)} files skipped).')
  return np.stack(arrays), skipped


# ----------------------------------------------------------------------------- models and losses

class PatchDiscriminator(nn.Module):
  """A small PatchGAN: one real/fake logit per overlapping patch."""

  width: int = 64

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = nn.leaky_relu(nn.Conv(self.width, (4, 4), strides=2)(x), 0.2)
    x = nn.Conv(self.width * 2, (4, 4), strides=2)(x)
    x = nn.leaky_relu(nn.GroupNorm(num_groups=32)(x), 0.2)
    return nn.Conv(1, (4, 4))(x)


def hinge_discriminator_loss(real_logits: jax.Array, fake_logits: jax.Array) -> jax.Array:
  """Hinge loss of the discriminator: push real logits above 1 and fake logits below -1."""
  return jnp.mean(nn.relu(1.0 - real_logits)) + jnp.mean(nn.relu(1.0 + fake_logits))


def psnr(images: jax.Array, reconstructions: jax.Array) -> jax.Array:
  """Mean per-image PSNR in dB on the [0, 255] scale of [-1, 1] images."""
  error = (jnp.clip(reconstructions, -1, 1) - images) * 127.5
  mse = jnp.mean(error ** 2, axis=(1, 2, 3))
  return jnp.mean(10.0 * jnp.log10(255.0 ** 2 / jnp.maximum(mse, 1e-10)))


def _pre_quantized(model: VQGAN, images: jax.Array) -> jax.Array:
  """Encoder outputs before quantisation (what the codebook is matched against)."""
  return model.quant_conv(model.encoder(images))


def forward(model: VQGAN, params, images: jax.Array):
  """(reconstruction, codes, pre-quantized z, quantizer loss terms) of images."""
  variables = {'params': params}
  z = model.apply(variables, images, method=_pre_quantized)
  quantized, codes, losses = model.apply(variables, z, method=lambda m, z: m.quantize(z))
  return model.apply(variables, quantized, method=VQGAN.decode), codes, z, losses


# ----------------------------------------------------------------------------- training

def make_train_step(model: VQGAN, optimizer, disc=None, disc_optimizer=None,
                    reconstruction: str = 'l1', disc_weight: float = 0.0,
                    disc_start: int = 0):
  """One jitted step: (state, images [-1, 1], step) -> (state, metrics, codes, z)."""

  def generator_loss(params, disc_params, images, active):
    recon, codes, z, losses = forward(model, params, images)
    error = recon - images
    rec = jnp.mean(jnp.abs(error)) if reconstruction == 'l1' else jnp.mean(error ** 2)
    loss = rec + losses['quantizer']
    if disc is not None:
      adversarial = -jnp.mean(disc.apply({'params': disc_params}, recon))
      loss += active * disc_weight * adversarial
    return loss, (recon, codes, z, rec, losses)

  def step_fn(state, images, step):
    active = (step >= disc_start).astype(jnp.float32)
    grads, aux = jax.grad(generator_loss, has_aux=True)(
        state['params'], state.get('disc_params'), images, active)
    recon, codes, z, rec, losses = aux
    updates, opt_state = optimizer.update(grads, state['opt_state'], state['params'])
    new_state = dict(state, params=optax.apply_updates(state['params'], updates),
                     opt_state=opt_state)
    metrics = {'reconstruction': rec, 'quantizer': losses['quantizer'],
               'psnr': psnr(images, recon)}
    metrics['loss'] = rec + losses['quantizer']
    if disc is not None:
      new_state, metrics['discriminator'] = _discriminator_update(
          new_state, images, jax.lax.stop_gradient(recon), active)
    return new_state, metrics, codes, z

  def _discriminator_update(state, images, recon, active):
    def loss_fn(disc_params):
      real = disc.apply({'params': disc_params}, images)
      fake = disc.apply({'params': disc_params}, recon)
      return active * hinge_discriminator_loss(real, fake)
    loss, grads = jax.value_and_grad(loss_fn)(state['disc_params'])
    updates, disc_opt_state = disc_optimizer.update(grads, state['disc_opt_state'],
                                                     state['disc_params'])
    # Before disc_start the loss is scaled to 0, so grads are 0 and Adam leaves params in place.
    return dict(state, disc_params=optax.apply_updates(state['disc_params'], updates),
                disc_opt_state=disc_opt_state), loss

  return jax.jit(step_fn, donate_argnums=0)


def reset_dead_codes(codebook: np.ndarray, used: np.ndarray, candidates: np.ndarray,
                     rng: np.random.Generator) -> np.ndarray:
  """Codebook with every unused entry replaced by a randomly chosen candidate vector.

  Args:
    codebook: [n_embed, embed_dim] codebook.
    used: [n_embed] bool, whether each code was chosen since the last check.
    candidates: [N, embed_dim] encoder outputs (before quantisation) to draw from.
    rng: numpy generator choosing the candidates.
  """
  codebook = np.array(codebook, copy=True)
  dead = np.flatnonzero(~np.asarray(used, bool))
  if dead.size:
    # Landing on real encoder outputs makes a dead code the nearest one for at least that input.
    codebook[dead] = candidates[rng.integers(0, len(candidates), dead.size)]
  return codebook


def code_statistics(counts: np.ndarray) -> Tuple[float, float]:
  """(fraction of codes used, perplexity exp(entropy)) of a code-count histogram."""
  total = counts.sum()
  if total == 0:
    return 0.0, 0.0
  p = counts[counts > 0] / total
  return float((counts > 0).mean()), float(np.exp(-(p * np.log(p)).sum()))


def init_state(config: VQGANConfig, optimizer, disc, disc_optimizer, key) -> State:
  """Parameters and optimizer states of the VQ-GAN (and discriminator, if any)."""
  model_key, disc_key = jax.random.split(key)
  images = jnp.zeros((1, config.resolution, config.resolution, config.in_channels))
  params = VQGAN(config).init(model_key, images)['params']
  state = {'params': params, 'opt_state': optimizer.init(params)}
  if disc is not None:
    disc_params = disc.init(disc_key, images)['params']
    state.update(disc_params=disc_params, disc_opt_state=disc_optimizer.init(disc_params))
  return state


def _optimizer(learning_rate: float, warmup: int, steps: int):
  schedule = optax.warmup_cosine_decay_schedule(0.0, learning_rate, max(1, min(warmup, steps - 1)),
                                                max(2, steps), learning_rate * 0.05)
  return optax.adam(schedule, b1=0.5, b2=0.9)


# ----------------------------------------------------------------------------- evaluation

def evaluate(tokenizer: ImageTokenizer, start: int, count: int,
             batch_size: int = 100) -> Dict[str, float]:
  """PSNR, codebook usage, perplexity and judge agreement on held-out synthetic examples."""
  dataset = SyntheticDataset(SyntheticConfig(resolution=tokenizer.config.resolution))
  examples = list(dataset.examples(start, count))
  counts = np.zeros(tokenizer.config.n_embed, np.int64)
  psnrs, agreements = [], []
  for i in range(0, count, batch_size):
    chunk = examples[i:i + batch_size]
    originals = np.stack([e.image for e in chunk])
    codes = tokenizer.encode(originals)
    reconstructions = image_io.postprocess(np.asarray(tokenizer.decode(codes)))
    counts += np.bincount(np.asarray(codes).ravel(), minlength=counts.size)
    mse = ((reconstructions.astype(np.float64) - originals) ** 2).mean(axis=(1, 2, 3))
    psnrs.extend(10 * np.log10(255.0 ** 2 / np.maximum(mse, 1e-10)))
    agreements.extend(agrees_with_truth(r, e.objects) for r, e in zip(reconstructions, chunk))
  usage, perplexity = code_statistics(counts)
  return {'psnr': float(np.mean(psnrs)), 'codebook_usage': usage, 'perplexity': perplexity,
          'judge_agreement': float(np.mean(agreements)), 'examples': count}


# ----------------------------------------------------------------------------- main

def train(config: VQGANConfig, output_dir: str, *, steps: int, batch_size: int,
          learning_rate: float, source: str = 'synthetic', image_folder: Optional[str] = None,
          pool_size: int = 8000, reconstruction: str = 'l1', disc_weight: float = 0.0,
          disc_start: int = 1000, dead_code_every: int = 100, dead_code_until: float = 0.8,
          warmup_steps: int = 100, log_every: int = 100, eval_examples: int = 500,
          eval_start: int = 1_000_000, seed: int = 0) -> Dict[str, object]:
  """Train, evaluate and save a tokenizer; returns the metrics written to metrics.json."""
  start_time = time.time()
  rng = np.random.default_rng(seed)
  skipped = []
  if source == 'folder':
    if not image_folder:
      raise ValueError('--source=folder needs --image_folder.')
    pool, skipped = folder_pool(image_folder, config.resolution)
    for path, error in skipped:
      logging.warning('Skipped %s: %s', path, error)
  else:
    pool = synthetic_pool(min(pool_size, steps * batch_size), config.resolution)
  logging.info('Training on %d images (%d files skipped), %.1fs to prepare.', len(pool),
               len(skipped), time.time() - start_time)

  model = VQGAN(config)
  optimizer = _optimizer(learning_rate, warmup_steps, steps)
  disc = PatchDiscriminator() if disc_weight > 0 else None
  disc_optimizer = _optimizer(learning_rate, warmup_steps, steps) if disc else None
  state = init_state(config, optimizer, disc, disc_optimizer, jax.random.key(seed))
  train_step = make_train_step(model, optimizer, disc, disc_optimizer, reconstruction,
                               disc_weight, disc_start)

  window_counts = np.zeros(config.n_embed, np.int64)  # Codes chosen since the last log.
  reset_counts = np.zeros(config.n_embed, np.int64)  # Codes chosen since the last reset check.
  resets, train_start = 0, time.time()
  for step in range(1, steps + 1):
    batch = pool[rng.integers(0, len(pool), batch_size)].astype(np.float32) / 127.5 - 1.0
    state, metrics, codes, z = train_step(state, batch, jnp.asarray(step))
    step_counts = np.bincount(np.asarray(codes).ravel(), minlength=config.n_embed)
    window_counts += step_counts
    reset_counts += step_counts

    if dead_code_every and step % dead_code_every == 0 and step < dead_code_until * steps:
      resets += int((reset_counts == 0).sum())
      state = _reset_codebook(state, reset_counts > 0, np.asarray(z), rng)
      reset_counts[:] = 0

    if step % log_every == 0 or step == steps:
      _log_progress(step, steps, jax.device_get(metrics), window_counts, train_start)
      window_counts[:] = 0
  train_seconds = time.time() - train_start

  tokenizer = ImageTokenizer(config, jax.device_get(state['params']))
  metrics = evaluate(tokenizer, eval_start, eval_examples)
  metrics.update(steps=steps, batch_size=batch_size, learning_rate=learning_rate,
                 train_seconds=train_seconds, total_seconds=time.time() - start_time,
                 dead_codes_reset=resets, skipped_files=len(skipped), source=source,
                 training_images=len(pool))
  os.makedirs(output_dir, exist_ok=True)
  with open(os.path.join(output_dir, 'metrics.json'), 'w', encoding='utf-8') as f:
    json.dump(metrics, f, indent=2)
  tokenizer.save(os.path.join(output_dir, 'tokenizer'))
  logging.info('Evaluation: %s', json.dumps(metrics))
  return metrics


def _reset_codebook(state: State, used: np.ndarray, z: np.ndarray, rng) -> State:
  """State with the codebook's unused entries moved onto this batch's encoder outputs."""
  params = state['params']
  codebook = np.asarray(params['quantize']['embedding'])
  new = reset_dead_codes(codebook, used, z.reshape(-1, z.shape[-1]), rng)
  quantize = dict(params['quantize'], embedding=jnp.asarray(new))
  return dict(state, params=dict(params, quantize=quantize))


def _log_progress(step, steps, metrics, window_counts, train_start):
  usage, perplexity = code_statistics(window_counts)
  rate = step / max(time.time() - train_start, 1e-9)
  logging.info('step %d/%d  loss %.4f  rec %.4f  psnr %.2f dB  usage %.3f  perplexity %.1f  '
               '%.2f steps/s  ETA %.0fs', step, steps, metrics['loss'], metrics['reconstruction'],
               metrics['psnr'], usage, perplexity, rate, (steps - step) / rate)


def main(argv):
  del argv
  if not _OUTPUT_DIR.value:
    raise app.UsageError('--output_dir is required.')
  config = gin_utils.vqgan_config(_GIN_FILE.value, _GIN_BINDINGS.value)
  metrics = train(
      config, _OUTPUT_DIR.value, steps=_STEPS.value, batch_size=_BATCH_SIZE.value,
      learning_rate=_LEARNING_RATE.value, source=_SOURCE.value, image_folder=_IMAGE_FOLDER.value,
      pool_size=_POOL_SIZE.value, reconstruction=_RECONSTRUCTION.value,
      disc_weight=_DISC_WEIGHT.value, disc_start=_DISC_START.value,
      dead_code_every=_DEAD_CODE_EVERY.value, dead_code_until=_DEAD_CODE_UNTIL.value,
      warmup_steps=_WARMUP_STEPS.value, log_every=_LOG_EVERY.value,
      eval_examples=_EVAL_EXAMPLES.value, eval_start=_EVAL_START.value, seed=_SEED.value)
  print(json.dumps(metrics, indent=2))


def run():
  """Entry point of tools/train_image_tokenizer.py and `cm3leon-train-image-tokenizer`."""
  cli.run_app(main, __doc__)


if __name__ == '__main__':
  run()
