r"""Text -> images: sample a PNG grid (one row per prompt) from a trained model; and, with
--task, the instruction tasks of a fine-tuned one (edit, control, ground, render, caption, vqa:
cm3leon_jax/cli/instruction_tasks.py).

  python tools/generate.py --checkpoint=/tmp/cm3leon_quickstart/model \
      --prompt="a large red circle" --prompt="a small blue square left of a large green triangle" \
      --num_samples=4 --guidance_scale=3 --output=/tmp/grid.png

Sampling is top-p with classifier-free guidance by default (the paper's setting); --cd_k_fraction
draws that share of each prompt's samples with CD-K instead. With --retrieval_index, each prompt's
retrieved documents go before it; with --clip_rerank, --num_samples are drawn and the best --keep
by CLIP similarity are shown. Samples are enlarged in the grid by nearest-neighbour upscaling
(--scale; by default the smallest factor giving cells of at least 128 pixels). The settings are
written beside the grid (<output>.json).

  python tools/generate.py --checkpoint=/tmp/sft/model --task=edit --image=scene.png \
      --instruction="make the red circle blue" --output=/tmp/edits.png
  python tools/generate.py --checkpoint=/tmp/sft/model --task=vqa --image=scene.png \
      --question="how many shapes are there?" --output=/tmp/answers.json
"""

import dataclasses
import json
import os
from typing import Optional, Tuple

from absl import app, flags, logging
import numpy as np
from PIL import Image

from cm3leon_jax import cli
from cm3leon_jax.cli import distributed
from cm3leon_jax.cli import instruction_tasks
from cm3leon_jax.decoding import generation
from cm3leon_jax.decoding import DecodingConfig
from cm3leon_jax.decoding.pretrained import Pretrained
from cm3leon_jax.training.metrics import image_grid

FLAGS = flags.FLAGS

# Default --scale: enough for each cell of the grid to be at least this many pixels on a side (the
# quickstart's 32-pixel samples are shown at 128).
MIN_CELL_PIXELS = 128


def define_flags():
  """The tool's flags (defined when run, so tests can import the module)."""
  distributed.define_checkpoint_flags()
  instruction_tasks.define_flags()
  flags.DEFINE_multi_string('prompt', [], 'A caption to draw, a text to render (repeat for '
                            'several).')
  flags.DEFINE_string('prompts_file', None, 'A text file with one caption per line.')
  flags.DEFINE_string('output', 'samples.png', 'The PNG grid to write.')
  flags.DEFINE_integer('scale', None, 'Enlarge each sample this many times in the grid '
                       '(nearest neighbour; 1: actual size). Default: the smallest factor that '
                       f'makes each cell at least {MIN_CELL_PIXELS} pixels.', lower_bound=1)
  flags.DEFINE_integer('num_samples', 4, 'Samples per prompt.')
  flags.DEFINE_integer('keep', None, 'With --clip_rerank: samples kept per prompt (default all).')
  flags.DEFINE_float('guidance_scale', None, 'Classifier-free guidance scale s (>= 0); default: '
                     'the task\'s (3, and 7.5 with image scale 1.5 for --task=edit).')
  flags.DEFINE_bool('guidance', True, 'Use classifier-free guidance (--noguidance: off).')
  flags.DEFINE_float('temperature', 1.0, 'Softmax temperature (0: greedy).')
  flags.DEFINE_integer('top_k', 0, 'Top-k filter (0: off).')
  flags.DEFINE_float('top_p', 0.9, 'Top-p (nucleus) filter (1: off).')
  flags.DEFINE_float('cd_k_fraction', 0.0, 'Share of samples drawn with CD-K.')
  flags.DEFINE_float('cd_k_alpha', 0.1, 'CD-K candidate threshold.')
  flags.DEFINE_integer('cd_k_k', 5, 'CD-K K.')
  flags.DEFINE_integer('seed', 0, 'Sampling seed.')
  flags.DEFINE_string('retrieval_index', None, 'Index folder (tools/build_index.py) to retrieve '
                      'documents for each prompt from.')
  flags.DEFINE_integer('num_retrieved', 2, 'Documents retrieved per prompt.')
  flags.DEFINE_string('clip_rerank', None, 'A CLIP folder: order each prompt\'s samples by CLIP '
                      'similarity to its caption.')


def read_prompts(required: bool = True) -> list:
  """The --prompt captions, then the --prompts_file lines; UsageError when there are none and
  the task needs them."""
  prompts = list(FLAGS.prompt)
  if FLAGS.prompts_file:
    with open(FLAGS.prompts_file, encoding='utf-8') as f:
      prompts += [line.strip() for line in f if line.strip()]
  if not prompts and required:
    raise app.UsageError('Give at least one --prompt or a --prompts_file.')
  return prompts


def decoding_config() -> DecodingConfig:
  """The sampling settings the flags describe."""
  scale, image_scale = instruction_tasks.guidance(FLAGS.task, FLAGS.guidance_scale,
                                                  FLAGS.image_guidance_scale, FLAGS.guidance)
  return DecodingConfig(
      temperature=FLAGS.temperature, top_k=FLAGS.top_k, top_p=FLAGS.top_p,
      num_decodes=FLAGS.num_samples, guidance_scale=scale, image_guidance_scale=image_scale,
      cd_k_fraction=FLAGS.cd_k_fraction, cd_k_alpha=FLAGS.cd_k_alpha, cd_k_k=FLAGS.cd_k_k,
      seed=FLAGS.seed)


def retrieved_prefixes(pretrained: Pretrained, prompts):
  """Retrieved documents' tokens for each prompt (None without --retrieval_index)."""
  if not FLAGS.retrieval_index:
    return None, None
  from cm3leon_jax.data.assembly import TokenLayout  # pylint: disable=g-import-not-at-top
  from cm3leon_jax.retrieval.retriever import Retriever  # pylint: disable=g-import-not-at-top
  from cm3leon_jax.retrieval.select import SelectionConfig  # pylint: disable=g-import-not-at-top
  retriever = Retriever(FLAGS.retrieval_index, SelectionConfig(k=FLAGS.num_retrieved))
  documents = retriever.retrieve(texts=prompts)
  layout = TokenLayout.from_vocabulary(pretrained.vocab)
  return ([retriever.prefix_tokens(row, layout) for row in documents],
          [[d.id for d in row] for row in documents])


def rerank(images: np.ndarray, prompts) -> np.ndarray:
  """Each prompt's samples ordered by CLIP similarity (best first), cut to --keep."""
  if not FLAGS.clip_rerank:
    return images
  from cm3leon_jax.tokenizers.document_encoder import DocumentEncoder  # pylint: disable=g-import-not-at-top
  encoder = DocumentEncoder(FLAGS.clip_rerank)
  keep = FLAGS.keep or images.shape[1]
  return np.stack([row[generation.rerank(encoder, row, text)[:keep]]
                   for row, text in zip(images, prompts)])


def upscale_factor(height: int, width: int, scale: Optional[int] = None) -> int:
  """`scale`, or (None) the smallest factor making a height x width sample at least
  MIN_CELL_PIXELS on each side (1 for samples that large already)."""
  if scale is not None:
    if scale < 1:
      raise ValueError(f'scale must be at least 1, got {scale}')
    return scale
  return max(1, -(-MIN_CELL_PIXELS // min(height, width)))


def sample_grid(images: np.ndarray, scale: Optional[int] = None) -> Tuple[np.ndarray, int]:
  """(the PNG grid of samples [P, S, H, W, 3], one row per prompt, the factor used).

  Each sample is enlarged `upscale_factor` times by repeating its pixels (nearest neighbour:
  the generated pixels stay as they are, only bigger).
  """
  factor = upscale_factor(images.shape[-3], images.shape[-2], scale)
  large = np.repeat(np.repeat(images, factor, axis=-3), factor, axis=-2)
  return image_grid(large.reshape((-1,) + large.shape[2:]), columns=images.shape[1]), factor


def write_text_task(pretrained: Pretrained, config: DecodingConfig) -> None:
  """Captions or answers: printed, and written as JSON to --output (its extension made .json)."""
  result = instruction_tasks.text_task(pretrained, config)
  result.update(checkpoint=os.path.abspath(FLAGS.checkpoint), task=FLAGS.task,
                decoding=dataclasses.asdict(config))
  path = os.path.splitext(FLAGS.output)[0] + '.json'
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, 'w', encoding='utf-8') as f:
    json.dump(result, f, indent=2)
  print(json.dumps({k: result[k] for k in ('captions', 'answers') if k in result}))
  print(path)


def main(argv):
  del argv
  task = FLAGS.task
  prompts = read_prompts(required=task in ('text_to_image', 'control', 'ground', 'render'))
  pretrained = Pretrained.load(FLAGS.checkpoint, FLAGS.image_tokenizer,
                               mesh=distributed.local_mesh(), dtype=FLAGS.dtype)
  config = decoding_config()
  if task in instruction_tasks.TEXT_TASKS:
    write_text_task(pretrained, config)
    return
  retrieved = None
  if task == 'text_to_image':
    prefixes, retrieved = retrieved_prefixes(pretrained, prompts)
    images, _ = generation.text_to_image(pretrained, prompts, config, prefixes)
  else:
    images, prompts = instruction_tasks.image_task(pretrained, config, prompts)
  images = rerank(images, prompts)
  grid, factor = sample_grid(images, FLAGS.scale)
  os.makedirs(os.path.dirname(os.path.abspath(FLAGS.output)), exist_ok=True)
  Image.fromarray(grid).save(FLAGS.output)
  settings = {'checkpoint': os.path.abspath(FLAGS.checkpoint), 'task': task, 'prompts': prompts,
              'decoding': dataclasses.asdict(config), 'retrieved': retrieved,
              'clip_rerank': FLAGS.clip_rerank, 'keep': FLAGS.keep, 'scale': factor,
              'image_tokenizer': pretrained.image_tokenizer_path}
  with open(os.path.splitext(FLAGS.output)[0] + '.json', 'w', encoding='utf-8') as f:
    json.dump(settings, f, indent=2)
  logging.info('Wrote %s (%d prompts x %d samples of %d x %d pixels, shown %d times larger).',
               FLAGS.output, *images.shape[:2], *images.shape[2:4], factor)
  print(FLAGS.output)


def run():
  """Entry point of tools/generate.py and `cm3leon-generate`."""
  define_flags()
  cli.run_app(main, __doc__)


if __name__ == '__main__':
  run()
