r"""Train a small CLIP contrastively, on synthetic captions or a file of (image, caption) pairs.

  python tools/train_clip.py --output_dir=/tmp/clip                     # tiny, synthetic
  python tools/train_clip.py --captions_file=pairs.tsv --image_size=64 --output_dir=...

The loss is CLIP's symmetric InfoNCE (cross-entropy of image->text and text->image logits) with
a learned temperature; AdamW with linear warm-up and cosine decay. Text is tokenized by a
word-level vocabulary built from the training captions. The output directory is laid out as
transformers' CLIPModel.save_pretrained does (config.json, model.safetensors, tokenizer.json), so
it loads offline with the existing interop::

  config, params = hf_clip.load_clip(output_dir)
  ids, mask = hf_clip.ClipTextTokenizer(output_dir)(captions)
  pixels = hf_clip.preprocess_images(images, config)        # CLIP normalisation, as in training

At the end the model is evaluated on held-out synthetic examples: for each caption, the top-1
image by cosine similarity is read back by ``evaluation.synthetic_judge`` and is a hit when it
holds the caption's main object (shape and colour). Metrics go to output_dir/metrics.json.
"""

import json
import os
import time
from typing import Dict, List, Optional, Sequence, Tuple

from absl import app, flags, logging
from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

from cm3leon_jax import cli
from cm3leon_jax.data import images as image_io
from cm3leon_jax.data.synthetic import SyntheticConfig, SyntheticDataset
from cm3leon_jax.evaluation.synthetic_eval import main_object
from cm3leon_jax.evaluation.synthetic_judge import read_objects
from cm3leon_jax.interop import hf_clip
from cm3leon_jax.interop.checkpoint_files import write_checkpoint
from cm3leon_jax.models.clip import CLIP
from cm3leon_jax.models.clip_config import CLIPConfig
from cm3leon_jax.tokenizers.document_encoder import DocumentEncoder

FLAGS = flags.FLAGS


def define_flags():
  """Define the command line's flags: only when the tool runs, since tests import it beside other
  tools whose flags share names such as --output_dir."""
  flags.DEFINE_string('output_dir', None, 'Where the model and metrics go.')
  flags.DEFINE_integer('steps', 800, 'Training steps.')
  flags.DEFINE_integer('batch_size', 128, 'Image-caption pairs per step (negatives).')
  flags.DEFINE_float('learning_rate', 2e-3, 'Peak AdamW learning rate.')
  flags.DEFINE_float('weight_decay', 0.05, 'AdamW decay of weight matrices.')
  flags.DEFINE_integer('warmup_steps', 100, 'Linear warm-up steps.')
  flags.DEFINE_string('captions_file', None,
                      'Lines "image_path<TAB>caption"; default: synthetic pairs.')
  flags.DEFINE_integer('pool_size', 20000,
                       'Synthetic training pairs generated up front and sampled from.')
  flags.DEFINE_integer('pool_start', 0,
                       'First synthetic index of the training pairs: a CLIP trained from another '
                       'start sees other examples (the quickstart\'s measuring CLIP).')
  flags.DEFINE_integer('image_size', 32, 'Image side in pixels.')
  flags.DEFINE_integer('patch_size', 4, 'ViT patch side.')
  flags.DEFINE_integer('width', 64, 'Hidden width of both towers.')
  flags.DEFINE_integer('layers', 2, 'Transformer layers of each tower.')
  flags.DEFINE_integer('projection_dim', 64, 'Shared embedding width.')
  flags.DEFINE_integer('max_length', 32, 'Text tokens, including begin and end.')
  flags.DEFINE_integer('log_every', 100, 'Steps between progress logs.')
  flags.DEFINE_integer('eval_examples', 1000, 'Held-out synthetic examples.')
  flags.DEFINE_integer('eval_start', 1_000_000,
                       'First held-out synthetic index (beyond the training range).')
  flags.DEFINE_integer('seed', 0, 'Seed of the initialisation and batch sampling.')


# The vocabulary's special tokens, in id order. The end token doubles as padding, as in OpenAI's
# CLIP (ClipTextTokenizer's default pad), and the text tower pools its first occurrence.
BOS, EOS, UNK = '<|startoftext|>', '<|endoftext|>', '<|unk|>'
SPECIALS = (BOS, EOS, UNK)
# log(1 / 0.07), CLIP's initial temperature; the scale is capped at 100 as CLIP does.
_INIT_LOGIT_SCALE = float(np.log(1 / 0.07))
_MAX_LOGIT_SCALE = float(np.log(100.0))


# ----------------------------------------------------------------------------- text

def build_tokenizer(captions: Sequence[str], max_length: int) -> Tokenizer:
  """A lower-cased word-level tokenizer whose vocabulary is every word of `captions`.

  Encodings are `<|startoftext|> words <|endoftext|>`, as CLIP's are; unseen words map to
  `<|unk|>`. Saved as tokenizer.json it loads with ``hf_clip.ClipTextTokenizer``.
  """
  normalizer = normalizers.Lowercase()
  pre_tokenizer = pre_tokenizers.Whitespace()
  words = sorted({word for caption in captions
                  for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(caption))})
  vocab = {token: i for i, token in enumerate(list(SPECIALS) + words)}
  tokenizer = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
  tokenizer.normalizer = normalizer
  tokenizer.pre_tokenizer = pre_tokenizer
  tokenizer.post_processor = processors.TemplateProcessing(
      single=f'{BOS} $A {EOS}', special_tokens=[(BOS, vocab[BOS]), (EOS, vocab[EOS])])
  tokenizer.add_special_tokens(list(SPECIALS))
  # Truncation keeps the end token (the post-processor's tokens are counted in max_length).
  tokenizer.enable_truncation(max_length)
  return tokenizer


def longest_encoding(tokenizer: Tokenizer, captions: Sequence[str]) -> int:
  """The longest encoding of `captions` (begin and end tokens included)."""
  return max(len(e.ids) for e in tokenizer.encode_batch(list(captions)))


# ----------------------------------------------------------------------------- data

def synthetic_pairs(start: int, count: int, resolution: int):
  """(uint8 images [count, R, R, 3], captions, ground-truth objects) of synthetic examples."""
  examples = list(SyntheticDataset(SyntheticConfig(resolution=resolution)).examples(start, count))
  return (np.stack([e.image for e in examples]), [e.caption for e in examples],
          [e.objects for e in examples])


def file_pairs(path: str, resolution: int) -> Tuple[np.ndarray, List[str]]:
  """Images and captions from lines 'image_path<TAB>caption' (paths relative to the file)."""
  root = os.path.dirname(os.path.abspath(path))
  images, captions = [], []
  with open(path, encoding='utf-8') as f:
    for line_number, line in enumerate(f, 1):
      if not line.strip():
        continue
      if '\t' not in line:
        raise ValueError(f'{path}:{line_number}: expected "image_path<TAB>caption".')
      image_path, caption = line.rstrip('\n').split('\t', 1)
      image = image_io.load_image(os.path.join(root, image_path))
      images.append(image_io.postprocess(image_io.preprocess(image, resolution)))
      captions.append(caption)
  if not images:
    raise ValueError(f'No image-caption pair in {path}.')
  return np.stack(images), captions


def encode_texts(tokenizer: Tokenizer, captions: Sequence[str],
                 max_length: int) -> Tuple[np.ndarray, np.ndarray]:
  """int32 ids and attention mask [N, max_length], padded with the end token (as ClipTextTokenizer
  pads)."""
  ids = np.full((len(captions), max_length), tokenizer.token_to_id(EOS), np.int32)
  mask = np.zeros((len(captions), max_length), np.int32)
  for i, encoding in enumerate(tokenizer.encode_batch(list(captions))):
    ids[i, :len(encoding.ids)] = encoding.ids
    mask[i, :len(encoding.ids)] = 1
  return ids, mask


# ----------------------------------------------------------------------------- model and loss

def clip_config(tokenizer: Tokenizer, image_size: int, patch_size: int, width: int, layers: int,
                projection_dim: int, max_length: int) -> CLIPConfig:
  """A small CLIP with equal towers; 64-wide heads, MLPs four times the width."""
  heads = max(1, width // 64)
  return CLIPConfig(
      image_size=image_size, patch_size=patch_size, vision_hidden=width, vision_layers=layers,
      vision_heads=heads, vision_mlp=4 * width, vocab_size=tokenizer.get_vocab_size(),
      max_positions=max_length, text_hidden=width, text_layers=layers, text_heads=heads,
      text_mlp=4 * width, eos_token_id=tokenizer.token_to_id(EOS), projection_dim=projection_dim,
      activation='gelu')


def contrastive_loss(image_emb: jax.Array, text_emb: jax.Array,
                     log_scale: jax.Array) -> Tuple[jax.Array, jax.Array]:
  """(symmetric InfoNCE loss, image->text top-1 accuracy) of a batch of matching pairs."""
  image_emb = image_emb / jnp.linalg.norm(image_emb, axis=-1, keepdims=True)
  text_emb = text_emb / jnp.linalg.norm(text_emb, axis=-1, keepdims=True)
  logits = jnp.exp(jnp.minimum(log_scale, _MAX_LOGIT_SCALE)) * image_emb @ text_emb.T
  labels = jnp.arange(logits.shape[0])
  loss = (optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean() +
          optax.softmax_cross_entropy_with_integer_labels(logits.T, labels).mean()) / 2
  return loss, jnp.mean(jnp.argmax(logits, axis=1) == labels)


def _optimizer(learning_rate: float, weight_decay: float, warmup: int, steps: int):
  schedule = optax.warmup_cosine_decay_schedule(0.0, learning_rate, max(1, min(warmup, steps - 1)),
                                                max(2, steps), learning_rate * 0.02)
  # Only weight matrices decay; biases, LayerNorm scales and the temperature do not.
  decay_mask = lambda params: jax.tree.map(lambda x: x.ndim >= 2, params)
  return optax.adamw(schedule, weight_decay=weight_decay, mask=decay_mask)


def make_train_step(model: CLIP, optimizer):
  """One jitted step: (state, pixels, ids, mask) -> (state, metrics)."""

  def loss_fn(trainable, pixels, ids, mask):
    image_emb, text_emb = model.apply({'params': trainable['clip']}, pixels, ids, mask)
    return contrastive_loss(image_emb, text_emb, trainable['logit_scale'])

  def step_fn(state, pixels, ids, mask):
    (loss, accuracy), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state['params'], pixels, ids, mask)
    updates, opt_state = optimizer.update(grads, state['opt_state'], state['params'])
    params = optax.apply_updates(state['params'], updates)
    metrics = {'loss': loss, 'accuracy': accuracy, 'temperature': jnp.exp(-params['logit_scale'])}
    return {'params': params, 'opt_state': opt_state}, metrics

  return jax.jit(step_fn, donate_argnums=0)


# ----------------------------------------------------------------------------- saving

def _to_hf_tensor(path: str, x: np.ndarray) -> np.ndarray:
  """Our parameter as transformers stores it (the inverse of ``hf_clip.load_clip``'s layout)."""
  if path.endswith('/kernel') and x.ndim == 4:  # Conv: our HWIO, torch's OIHW.
    return x.transpose(3, 2, 0, 1)
  if path.endswith('/kernel'):  # Linear: our (in, out), torch's (out, in).
    return x.T
  return x


def hf_config_json(config: CLIPConfig, max_length: int) -> Dict[str, object]:
  """transformers' CLIPModel config.json for `config`, plus how this tool trained it."""
  shared = {'hidden_act': config.activation, 'layer_norm_eps': config.layer_norm_eps}
  return {
      'architectures': ['CLIPModel'], 'model_type': 'clip', 'projection_dim': config.projection_dim,
      'text_config': dict(
          shared, vocab_size=config.vocab_size, hidden_size=config.text_hidden,
          intermediate_size=config.text_mlp, num_hidden_layers=config.text_layers,
          num_attention_heads=config.text_heads, max_position_embeddings=config.max_positions,
          eos_token_id=config.eos_token_id, bos_token_id=SPECIALS.index(BOS),
          pad_token_id=config.eos_token_id),
      'vision_config': dict(
          shared, hidden_size=config.vision_hidden, intermediate_size=config.vision_mlp,
          num_hidden_layers=config.vision_layers, num_attention_heads=config.vision_heads,
          num_channels=3, image_size=config.image_size, patch_size=config.patch_size),
      # Not read by transformers: what a retriever must reproduce to use this model.
      'cm3leon_clip': {
          'clip_config': {k: getattr(config, k) for k in config.__dataclass_fields__},
          'preprocessing': {
              'function': 'cm3leon_jax.interop.hf_clip.preprocess_images',
              'image_mean': hf_clip.MEAN.tolist(), 'image_std': hf_clip.STD.tolist()},
          'tokenizer_file': 'tokenizer.json', 'max_length': max_length,
      },
  }


def save(directory: str, config: CLIPConfig, params, logit_scale: float, tokenizer: Tokenizer,
         max_length: int):
  """Write config.json, model.safetensors and tokenizer.json (see the module docstring)."""
  flat = traverse_util.flatten_dict(jax.device_get(params), sep='/')
  tensors = {hf_clip.hf_name(path): _to_hf_tensor(path, np.asarray(x, np.float32))
             for path, x in flat.items()}
  tensors['logit_scale'] = np.asarray(logit_scale, np.float32)
  write_checkpoint(directory, hf_config_json(config, max_length), tensors)
  tokenizer.save(os.path.join(directory, 'tokenizer.json'))
  with open(os.path.join(directory, 'tokenizer_config.json'), 'w', encoding='utf-8') as f:
    json.dump({'pad_token': EOS, 'bos_token': BOS, 'eos_token': EOS, 'unk_token': UNK,
               'model_max_length': max_length}, f, indent=2)


# ----------------------------------------------------------------------------- evaluation

def embed(directory: str, images: np.ndarray, captions: Sequence[str],
          batch_size: int = 250) -> Tuple[np.ndarray, np.ndarray]:
  """L2-normalised (image, text) embeddings by a saved model, loaded as a retriever loads it."""
  encoder = DocumentEncoder(directory, batch_size)
  return encoder.embed_images(images), encoder.embed_texts(captions)


def evaluate(directory: str, start: int, count: int) -> Dict[str, float]:
  """Retrieval quality of a saved model on held-out synthetic examples.

  text_to_image_hit_rate: the share of captions whose top-1 image (exact inner product over the
    held-out images) is read by the synthetic judge to hold an object of the shape and colour of
    the caption's main object.
  image_to_text_recall_at_1: the share of images whose top-1 caption is their own caption's text
    (compared as text, since distinct examples can share a caption).
  """
  with open(os.path.join(directory, 'config.json'), encoding='utf-8') as f:
    resolution = json.load(f)['vision_config']['image_size']
  images, captions, objects = synthetic_pairs(start, count, resolution)
  image_emb, text_emb = embed(directory, images, captions)
  similarity = text_emb @ image_emb.T
  top_image = similarity.argmax(axis=1)
  seen = {}  # The judge's reading of each retrieved image, read once.
  hits = []
  for caption_objects, index in zip(objects, top_image):
    if index not in seen:
      seen[index] = {(o.shape, o.colour) for o in read_objects(images[index])}
    wanted = main_object(caption_objects)
    hits.append((wanted.shape, wanted.colour) in seen[index])
  top_caption = similarity.argmax(axis=0)
  recall = np.mean([captions[j] == captions[i] for i, j in enumerate(top_caption)])
  return {'text_to_image_hit_rate': float(np.mean(hits)),
          'image_to_text_recall_at_1': float(recall), 'eval_examples': count}


# ----------------------------------------------------------------------------- main

def _check_disjoint(pool_start: int, pool_size: int, eval_start: int, eval_examples: int):
  """Refuse a synthetic training pool that holds held-out examples: the evaluation would be of
  examples the model trained on."""
  if pool_start < eval_start + eval_examples and eval_start < pool_start + pool_size:
    raise ValueError(f'The training pool [{pool_start}, {pool_start + pool_size}) overlaps the '
                     f'held-out examples [{eval_start}, {eval_start + eval_examples}); move '
                     '--pool_start or --eval_start.')


def train(output_dir: str, *, steps: int, batch_size: int, learning_rate: float,
          weight_decay: float = 0.05, warmup_steps: int = 100, captions_file: Optional[str] = None,
          pool_size: int = 20000, pool_start: int = 0, image_size: int = 32,
          patch_size: int = 4, width: int = 64,
          layers: int = 2, projection_dim: int = 64, max_length: int = 32, log_every: int = 100,
          eval_examples: int = 1000, eval_start: int = 1_000_000,
          seed: int = 0) -> Dict[str, object]:
  """Train, save and evaluate a CLIP; returns the metrics written to metrics.json."""
  start_time = time.time()
  if captions_file:
    images, captions = file_pairs(captions_file, image_size)
  else:
    pool_size = min(pool_size, steps * batch_size)
    _check_disjoint(pool_start, pool_size, eval_start, eval_examples)
    images, captions, _ = synthetic_pairs(pool_start, pool_size, image_size)
  tokenizer = build_tokenizer(captions, max_length)
  ids, mask = encode_texts(tokenizer, captions, max_length)
  config = clip_config(tokenizer, image_size, patch_size, width, layers, projection_dim,
                       max_length)
  pixels = hf_clip.preprocess_images(images, config)
  logging.info('Training on %d pairs; %d tokens in the vocabulary, longest caption %d; %.1fs '
               'to prepare.',
               len(captions), tokenizer.get_vocab_size(), longest_encoding(tokenizer, captions),
               time.time() - start_time)

  model = CLIP(config)
  clip_params = model.init(jax.random.key(seed), pixels[:1], ids[:1], mask[:1])['params']
  params = {'clip': clip_params, 'logit_scale': jnp.asarray(_INIT_LOGIT_SCALE)}
  optimizer = _optimizer(learning_rate, weight_decay, warmup_steps, steps)
  state = {'params': params, 'opt_state': optimizer.init(params)}
  train_step = make_train_step(model, optimizer)

  rng = np.random.default_rng(seed)
  batch_size = min(batch_size, len(captions))
  train_start = time.time()
  for step in range(1, steps + 1):
    # Without replacement within a batch: a repeated pair would be its own false negative.
    batch = rng.choice(len(captions), batch_size, replace=False)
    state, metrics = train_step(state, pixels[batch], ids[batch], mask[batch])
    if step % log_every == 0 or step == steps:
      metrics = jax.device_get(metrics)
      rate = step / max(time.time() - train_start, 1e-9)
      logging.info('step %d/%d  loss %.4f  batch accuracy %.3f  temperature %.4f  %.2f steps/s  '
                   'ETA %.0fs', step, steps, metrics['loss'], metrics['accuracy'],
                   metrics['temperature'], rate, (steps - step) / rate)
  train_seconds = time.time() - train_start
  final = jax.device_get(metrics)

  params = jax.device_get(state['params'])
  save(output_dir, config, params['clip'], float(params['logit_scale']), tokenizer, max_length)
  eval_start_time = time.time()
  results = evaluate(output_dir, eval_start, eval_examples)
  results.update(steps=steps, batch_size=batch_size, learning_rate=learning_rate,
                 final_loss=float(final['loss']), final_batch_accuracy=float(final['accuracy']),
                 temperature=float(final['temperature']), train_seconds=train_seconds,
                 eval_seconds=time.time() - eval_start_time,
                 total_seconds=time.time() - start_time, training_pairs=len(captions),
                 source=captions_file or 'synthetic', seed=seed,
                 pool_start=None if captions_file else pool_start, parameters=int(sum(
                     x.size for x in jax.tree.leaves(params['clip']))))
  with open(os.path.join(output_dir, 'metrics.json'), 'w', encoding='utf-8') as f:
    json.dump(results, f, indent=2)
  logging.info('Evaluation: %s', json.dumps(results))
  return results


def main(argv):
  del argv
  if not FLAGS.output_dir:
    raise app.UsageError('--output_dir is required.')
  metrics = train(
      FLAGS.output_dir, steps=FLAGS.steps, batch_size=FLAGS.batch_size,
      learning_rate=FLAGS.learning_rate, weight_decay=FLAGS.weight_decay,
      warmup_steps=FLAGS.warmup_steps, captions_file=FLAGS.captions_file,
      pool_size=FLAGS.pool_size, pool_start=FLAGS.pool_start, image_size=FLAGS.image_size,
      patch_size=FLAGS.patch_size, width=FLAGS.width, layers=FLAGS.layers,
      projection_dim=FLAGS.projection_dim,
      max_length=FLAGS.max_length, log_every=FLAGS.log_every,
      eval_examples=FLAGS.eval_examples, eval_start=FLAGS.eval_start, seed=FLAGS.seed)
  print(json.dumps(metrics, indent=2))


def run():
  """Entry point of tools/train_clip.py and `cm3leon-train-clip`."""
  define_flags()
  cli.run_app(main, __doc__)


if __name__ == '__main__':
  run()
