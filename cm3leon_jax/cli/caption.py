r"""Images -> captions (JSONL), by CM3 infilling of the caption before each image.

  python tools/caption.py --checkpoint=/tmp/cm3leon_quickstart/model \
      --images=/data/photos --output=/tmp/captions.jsonl

Each image is loaded, resized and centre-cropped to the tokenizer's resolution, VQ-encoded, and
captioned from the prompt ``<sentinel:0> <break> image <infill> <sentinel:0>`` (greedy by
default). Writes one line per image: {"image": path, "captions": [...]}. Images that cannot be
read are reported on their line with an "error" and skipped.
"""

import json
import os

from absl import app, flags, logging
import numpy as np

from cm3leon_jax import cli
from cm3leon_jax.cli import distributed
from cm3leon_jax.decoding import generation
from cm3leon_jax.data import images as image_lib
from cm3leon_jax.decoding import DecodingConfig
from cm3leon_jax.decoding.pretrained import Pretrained

FLAGS = flags.FLAGS
IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.webp', '.bmp', '.gif')


def define_flags():
  """The tool's flags (defined when run, so tests can import the module)."""
  distributed.define_checkpoint_flags()
  flags.DEFINE_multi_string('images', [], 'Image files or folders (repeatable).')
  flags.DEFINE_string('output', 'captions.jsonl', 'The JSONL file to write.')
  flags.DEFINE_integer('num_captions', 1, 'Captions per image.')
  flags.DEFINE_float('temperature', 0.0, 'Softmax temperature (0: greedy).')
  flags.DEFINE_float('top_p', 1.0, 'Top-p filter (1: off).')
  flags.DEFINE_integer('max_tokens', 32, 'Caption length limit in tokens.')
  flags.DEFINE_integer('batch_size', 16, 'Images per decoding call.')
  flags.DEFINE_integer('seed', 0, 'Sampling seed.')


def image_paths(arguments) -> list:
  """Files named, and the image files inside folders named, sorted."""
  paths = []
  for argument in arguments:
    if os.path.isdir(argument):
      paths += sorted(os.path.join(argument, name) for name in os.listdir(argument)
                      if name.lower().endswith(IMAGE_EXTENSIONS))
    else:
      paths.append(argument)
  if not paths:
    raise app.UsageError('Give image files or folders with --images.')
  return paths


def load_pixels(paths, resolution: int):
  """([pixels in [-1, 1]], [the paths they came from], [error lines for the others])."""
  pixels, kept, errors = [], [], []
  for path in paths:
    try:
      pixels.append(image_lib.preprocess(image_lib.load_image(path), resolution))
      kept.append(path)
    except image_lib.ImageError as e:
      logging.warning('Skipping %s: %s', path, e)
      errors.append({'image': path, 'error': str(e)})
  return pixels, kept, errors


def main(argv):
  del argv
  pretrained = Pretrained.load(FLAGS.checkpoint, FLAGS.image_tokenizer,
                               mesh=distributed.local_mesh(), dtype=FLAGS.dtype)
  resolution = pretrained.image_tokenizer.config.resolution
  pixels, kept, errors = load_pixels(image_paths(FLAGS.images), resolution)
  config = DecodingConfig(temperature=FLAGS.temperature, top_p=FLAGS.top_p,
                          num_decodes=FLAGS.num_captions, seed=FLAGS.seed)
  lines = list(errors)
  for start in range(0, len(kept), FLAGS.batch_size):
    batch = np.stack(pixels[start:start + FLAGS.batch_size])
    captions = generation.caption(pretrained, pretrained.encode_images(batch), config,
                                  FLAGS.max_tokens)
    lines += [{'image': path, 'captions': texts}
              for path, texts in zip(kept[start:start + FLAGS.batch_size], captions)]
  with open(FLAGS.output, 'w', encoding='utf-8') as f:
    f.writelines(json.dumps(line) + '\n' for line in lines)
  logging.info('Captioned %d images (%d skipped) into %s.', len(kept), len(errors), FLAGS.output)
  print(FLAGS.output)


def run():
  """Entry point of tools/caption.py and `cm3leon-caption`."""
  define_flags()
  cli.run_app(main, __doc__)


if __name__ == '__main__':
  run()
