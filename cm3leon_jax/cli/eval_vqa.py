r"""VQAv2-style question answering: answer each question about its image with a model and score
the answers with the official VQA accuracy (overall and per answer type).

  python tools/eval_vqa.py --checkpoint=/path/to/model --output_dir=/tmp/vqa \
      --questions=v2_OpenEnded_mscoco_val2014_questions.json \
      --annotations=v2_mscoco_val2014_annotations.json --image_dir=val2014

Each prompt is ``image <break> --template`` (default "Question: {question} Answer:", the paper's
SFT wording), decoded greedily; the answer is the continuation up to its first period or newline.
Writes answers.json (the official results format: [{"question_id", "answer"}]) and result.json.
"""

import json
import os

from absl import app, flags, logging

from cm3leon_jax import cli
from cm3leon_jax.decoding import DecodingConfig
from cm3leon_jax.decoding.pretrained import Pretrained
from cm3leon_jax.evaluation import caption_eval, vqa_accuracy

FLAGS = flags.FLAGS


def define_flags():
  """The tool's flags (defined when run, so tests can import the module)."""
  flags.DEFINE_string('checkpoint', None, 'A training run folder or an exported model.',
                      required=True)
  flags.DEFINE_string('image_tokenizer', None, 'ImageTokenizer folder (default: the run\'s).')
  flags.DEFINE_string('output_dir', None, 'Where answers.json and result.json go.',
                      required=True)
  flags.DEFINE_string('questions', None, 'VQAv2-style questions JSON.', required=True)
  flags.DEFINE_string('annotations', None, 'VQAv2-style annotations JSON.', required=True)
  flags.DEFINE_string('image_dir', None, 'Folder of the images.', required=True)
  flags.DEFINE_string('image_pattern', 'COCO_val2014_{image_id:012d}.jpg',
                      'Image file name of an image id.')
  flags.DEFINE_string('template', 'Question: {question} Answer:', 'Prompt text after the image.')
  flags.DEFINE_integer('limit', None, 'Evaluate only the first N questions.')
  flags.DEFINE_integer('max_tokens', 8, 'Answer length limit in tokens.')
  flags.DEFINE_integer('batch_size', 16, 'Questions per decoding call.')


def main(argv):
  del argv
  if '{question}' not in FLAGS.template:
    raise app.UsageError('--template must contain {question}.')
  pretrained = Pretrained.load(FLAGS.checkpoint, FLAGS.image_tokenizer)
  questions = list(caption_eval.vqa_questions(FLAGS.questions, FLAGS.annotations, FLAGS.image_dir,
                                              FLAGS.image_pattern, FLAGS.limit))
  if not questions:
    raise app.UsageError('No questions with readable images to evaluate.')
  config = DecodingConfig(temperature=0.0, num_decodes=1)
  answers = caption_eval.answer_all(pretrained, questions, FLAGS.template, config,
                                    FLAGS.batch_size, FLAGS.max_tokens)
  scores = vqa_accuracy.vqa_accuracy({q.question_id: a for q, a in zip(questions, answers)},
                                     {q.question_id: q.annotation for q in questions})
  os.makedirs(FLAGS.output_dir, exist_ok=True)
  with open(os.path.join(FLAGS.output_dir, 'answers.json'), 'w', encoding='utf-8') as f:
    json.dump([{'question_id': q.question_id, 'answer': a} for q, a in zip(questions, answers)],
              f, indent=1)
  result = {**scores, 'template': FLAGS.template, 'checkpoint': FLAGS.checkpoint,
            'questions': FLAGS.questions, 'annotations': FLAGS.annotations}
  with open(os.path.join(FLAGS.output_dir, 'result.json'), 'w', encoding='utf-8') as f:
    json.dump(result, f, indent=2, sort_keys=True, default=str)
  logging.info('VQA accuracy %.2f over %d questions.', scores['overall'], scores['count'])
  print(json.dumps({'overall': scores['overall'], 'per_answer_type': scores['per_answer_type'],
                    'count': scores['count']}))


def run():
  """Entry point of tools/eval_vqa.py and `cm3leon-eval-vqa`."""
  define_flags()
  cli.run_app(main, __doc__)


if __name__ == '__main__':
  run()
