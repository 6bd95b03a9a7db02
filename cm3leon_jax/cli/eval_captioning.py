r"""COCO captioning: caption the images with a model and score the captions with CIDEr-D, as the
COCO caption evaluation does (PTB tokenization, pycocoevalcap's CIDEr-D).

  python tools/eval_captioning.py --checkpoint=/path/to/model --output_dir=/tmp/captioning \
      [--tfds_split=test --tfds_data_dir=~/tensorflow_datasets]   # Karpathy test, 5,000 images
      [--annotations=captions_val2014.json --image_dir=val2014]   # or a COCO-style file

Captions are greedy by default (--temperature). With --results (a COCO results file, e.g. another
model's captions.json) no model runs: those captions are scored. The PTB tokenizer is Stanford's jar on Java when
both are present (pycocoevalcap ships the jar), else the Python equivalent (--ptb_backend).
Writes captions.json (COCO results format: [{"image_id", "caption"}]) and result.json (CIDEr-D,
per-image scores, settings, counts, the tokenizer backend used).
"""

import json
import os

from absl import app, flags, logging

from cm3leon_jax import cli
from cm3leon_jax.decoding import DecodingConfig
from cm3leon_jax.decoding.pretrained import Pretrained
from cm3leon_jax.evaluation import caption_eval

FLAGS = flags.FLAGS


def define_flags():
  """The tool's flags (defined when run, so tests can import the module)."""
  flags.DEFINE_string('checkpoint', None, 'A training run folder or an exported model.')
  flags.DEFINE_string('results', None, 'Score these captions ([{"image_id", "caption"}]) '
                      'instead of running a model.')
  flags.DEFINE_string('image_tokenizer', None, 'ImageTokenizer folder (default: the run\'s).')
  flags.DEFINE_string('output_dir', None, 'Where captions.json and result.json go.',
                      required=True)
  flags.DEFINE_string('tfds_split', 'test', 'tfds coco_captions split (Karpathy test).')
  flags.DEFINE_string('tfds_data_dir', None, 'tensorflow-datasets data_dir.')
  flags.DEFINE_string('annotations', None, 'A COCO-style captions JSON instead of tfds.')
  flags.DEFINE_string('image_dir', None, 'The images of --annotations.')
  flags.DEFINE_integer('limit', None, 'Evaluate only the first N images.')
  flags.DEFINE_float('temperature', 0.0, 'Softmax temperature (0: greedy).')
  flags.DEFINE_float('top_p', 1.0, 'Top-p filter (1: off).')
  flags.DEFINE_integer('max_tokens', 32, 'Caption length limit in tokens.')
  flags.DEFINE_integer('batch_size', 16, 'Images per decoding call.')
  flags.DEFINE_integer('seed', 0, 'Sampling seed.')
  flags.DEFINE_enum('ptb_backend', 'auto', ['auto', 'java', 'python'], 'PTB tokenization.')


def read_images():
  """The evaluated images with their references, from --annotations or tfds."""
  if FLAGS.annotations:
    if not FLAGS.image_dir:
      raise app.UsageError('--annotations needs --image_dir.')
    return list(caption_eval.coco_from_json(FLAGS.annotations, FLAGS.image_dir, FLAGS.limit))
  return list(caption_eval.coco_from_tfds(FLAGS.tfds_split, FLAGS.tfds_data_dir, FLAGS.limit))


def model_captions(items) -> list:
  """--checkpoint's caption of each image."""
  if not FLAGS.checkpoint:
    raise app.UsageError('Give --checkpoint (a model to run) or --results (captions to score).')
  pretrained = Pretrained.load(FLAGS.checkpoint, FLAGS.image_tokenizer)
  config = DecodingConfig(temperature=FLAGS.temperature, top_p=FLAGS.top_p, num_decodes=1,
                          seed=FLAGS.seed)
  return caption_eval.caption_all(pretrained, [i.image for i in items], config,
                                  FLAGS.batch_size, FLAGS.max_tokens)


def given_captions(items) -> list:
  """The --results caption of each image; every evaluated image needs one."""
  with open(FLAGS.results, encoding='utf-8') as f:
    by_image = {str(r['image_id']): r['caption'] for r in json.load(f)}
  missing = [i.image_id for i in items if i.image_id not in by_image]
  if missing:
    raise app.UsageError(f'{FLAGS.results} has no caption for {len(missing)} evaluated images, '
                         f'e.g. {missing[0]}.')
  return [by_image[i.image_id] for i in items]


def main(argv):
  del argv
  items = read_images()
  if not items:
    raise app.UsageError('No images with reference captions to evaluate.')
  captions = given_captions(items) if FLAGS.results else model_captions(items)
  scores = caption_eval.score_captions(items, captions, FLAGS.ptb_backend)
  os.makedirs(FLAGS.output_dir, exist_ok=True)
  with open(os.path.join(FLAGS.output_dir, 'captions.json'), 'w', encoding='utf-8') as f:
    json.dump([{'image_id': i.image_id, 'caption': c} for i, c in zip(items, captions)], f,
              indent=1)
  result = {**scores, 'count': len(items), 'source': FLAGS.annotations or f'tfds:{FLAGS.tfds_split}',
            'decoding': {'temperature': FLAGS.temperature, 'top_p': FLAGS.top_p,
                         'max_tokens': FLAGS.max_tokens, 'seed': FLAGS.seed},
            'checkpoint': FLAGS.checkpoint, 'results': FLAGS.results}
  path = os.path.join(FLAGS.output_dir, 'result.json')
  with open(path, 'w', encoding='utf-8') as f:
    json.dump(result, f, indent=2, sort_keys=True)
  logging.info('CIDEr-D %.4f over %d images (PTB tokenization: %s).', scores['cider_d'],
               len(items), scores['ptb_backend'])
  print(json.dumps({'cider_d': scores['cider_d'], 'count': len(items)}))


def run():
  """Entry point of tools/eval_captioning.py and `cm3leon-eval-captioning`."""
  define_flags()
  cli.run_app(main, __doc__)


if __name__ == '__main__':
  run()
