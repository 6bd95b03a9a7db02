r"""Preprocess image-caption pairs into a document store with Apache Beam.

  # 2,000 synthetic pairs on this machine (DirectRunner):
  python tools/preprocess.py --source=synthetic --num_examples=2000 --split=train \
      --output_dir=/tmp/store --text_vocabulary=/tmp/text.model --image_tokenizer=/tmp/tok

  # MS-COCO captions from a prepared tensorflow-datasets folder, two local worker processes:
  python tools/preprocess.py --source=coco_captions --split=validation --tfds_data_dir=~/tfds \
      --output_dir=/tmp/coco ... --direct_num_workers=2 --direct_running_mode=multi_processing

  # With CLIP image embeddings for the retrieval stage (tools/build_index.py, tools/retrieve.py):
  python tools/preprocess.py ... --clip=/tmp/clip

  # Your own data: a JSONL manifest of {"image": "relative/path.jpg", "text": "..."} lines:
  python tools/preprocess.py --source=jsonl --manifest=data/pairs.jsonl --output_dir=...

  # Instruction documents for fine-tuning (one store per task; data/sft_templates.py):
  python tools/preprocess.py --source=synthetic_instructions --task=edit --num_examples=2000 ...
  python tools/preprocess.py --source=instruct_pix2pix --manifest=edits.jsonl ...
  python tools/preprocess.py --source=control --control=canny --manifest=controls.jsonl ...
  python tools/preprocess.py --source=rendered_text --manifest=signs.jsonl ...
  python tools/preprocess.py --source=coco_caption_instructions --tfds_data_dir=~/tfds ...
  python tools/preprocess.py --source=vqa_json --questions=v2_OpenEnded_mscoco_val2014_questions.json \
      --annotations=v2_mscoco_val2014_annotations.json --image_root=val2014 ...

Flags this tool does not know are Beam pipeline options, e.g. ``--runner=DataflowRunner
--project=P --region=R --temp_location=gs://... --requirements_file=requirements.txt`` (on
Dataflow, --output_dir and the tokenizer paths should be gs:// paths the workers can read).
Writes ``<output_dir>/<split>/``: TFRecord shards, manifest.json and bad_records.jsonl
(see cm3leon_jax/data/store.py), and prints the manifest's path and its counts.
"""

import json
import os

from absl import app, flags, logging
from apache_beam.options.pipeline_options import PipelineOptions

from cm3leon_jax import cli
from cm3leon_jax.data import beam, preprocess, sft_preprocess, sft_sources
from cm3leon_jax.data import sft_templates
from cm3leon_jax.data.sources import CocoCaptionsSource, JsonlSource, SyntheticSource

INSTRUCTION_SOURCES = ('synthetic_instructions', 'instruct_pix2pix', 'control', 'rendered_text',
                       'coco_caption_instructions', 'vqa_json')
_SOURCE = flags.DEFINE_enum('source', 'synthetic', ['synthetic', 'coco_captions', 'jsonl',
                                                    *INSTRUCTION_SOURCES],
                            'Where the image-caption pairs or instruction records come from.')
_TASK = flags.DEFINE_enum('task', 'edit', list(sft_sources.SYNTHETIC_TASKS),
                          'The instruction task of --source=synthetic_instructions.')
_CONTROL = flags.DEFINE_enum('control', 'canny', sorted(sft_templates.CONTROL_PHRASES),
                             'What the control images of --source=control show.')
_SPLIT = flags.DEFINE_string('split', 'train', 'Split to read and to write under output_dir.')
_OUTPUT_DIR = flags.DEFINE_string('output_dir', None, 'The store folder.', required=True)
_TEXT_VOCABULARY = flags.DEFINE_string('text_vocabulary', None,
                                       'SentencePiece .model or tokenizers .json file.',
                                       required=True)
_IMAGE_TOKENIZER = flags.DEFINE_string('image_tokenizer', None,
                                       'ImageTokenizer checkpoint folder.', required=True)
_NUM_EXAMPLES = flags.DEFINE_integer('num_examples', 2000, 'Synthetic pairs to make.')
_TFDS_DATA_DIR = flags.DEFINE_string('tfds_data_dir', None, 'tensorflow-datasets data_dir.')
_MANIFEST = flags.DEFINE_string('manifest', None, 'JSONL manifest (--source=jsonl, '
                                'instruct_pix2pix, control or rendered_text).')
_QUESTIONS = flags.DEFINE_string('questions', None, 'VQAv2-style questions file (--source=vqa_json).')
_ANNOTATIONS = flags.DEFINE_string('annotations', None,
                                   'VQAv2-style annotations file (--source=vqa_json).')
_IMAGE_PATTERN = flags.DEFINE_string('image_pattern', 'COCO_{subtype}_{image_id:012d}.jpg',
                                     'Image file names of --source=vqa_json, under --image_root.')
_IMAGE_ROOT = flags.DEFINE_string('image_root', None,
                                  'Folder the manifest\'s image paths are relative to '
                                  '(default: the manifest\'s folder).')
_NUM_SHARDS = flags.DEFINE_integer('num_shards', 4, 'TFRecord shards to write.')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 32, 'Images per VQ-GAN call.')
_CAPTIONS_PER_IMAGE = flags.DEFINE_integer('captions_per_image', 0,
                                           'Documents per image (0: one per caption).')
_MAX_TEXT_TOKENS = flags.DEFINE_integer('max_text_tokens', 512, 'Longer captions are skipped.')
_MAX_DOCUMENT_TOKENS = flags.DEFINE_integer(
    'max_document_tokens', None, 'Instruction documents longer than this (the training sequence '
    'length) are skipped.')
_MIN_IMAGE_SIDE = flags.DEFINE_integer('min_image_side', 2, 'Smaller images are skipped.')
_NUM_SENTINELS = flags.DEFINE_integer('num_sentinels', 256, 'CM3 sentinels in the vocabulary.')
_CLIP = flags.DEFINE_string('clip', None,
                            'CLIP checkpoint folder (e.g. from tools/train_clip.py): also store each '
                            'image\'s CLIP embedding, which tools/build_index.py needs.')


def make_source():
  """The source the flags describe."""
  if _SOURCE.value == 'synthetic':
    return SyntheticSource(_NUM_EXAMPLES.value, _SPLIT.value)
  if _SOURCE.value == 'coco_captions':
    return CocoCaptionsSource(_SPLIT.value, _TFDS_DATA_DIR.value)
  if _SOURCE.value == 'synthetic_instructions':
    return sft_sources.SyntheticInstructionSource(_TASK.value, _NUM_EXAMPLES.value, _SPLIT.value)
  if _SOURCE.value == 'coco_caption_instructions':
    return sft_sources.CaptionInstructions(CocoCaptionsSource(_SPLIT.value, _TFDS_DATA_DIR.value))
  if _SOURCE.value == 'vqa_json':
    if not (_QUESTIONS.value and _ANNOTATIONS.value and _IMAGE_ROOT.value):
      raise app.UsageError('--source=vqa_json needs --questions, --annotations and --image_root.')
    return sft_sources.VqaJsonSource(_QUESTIONS.value, _ANNOTATIONS.value, _IMAGE_ROOT.value,
                                     _IMAGE_PATTERN.value)
  if not _MANIFEST.value:
    raise app.UsageError(f'--source={_SOURCE.value} needs --manifest.')
  if _SOURCE.value == 'instruct_pix2pix':
    return sft_sources.InstructPix2PixSource(_MANIFEST.value, _IMAGE_ROOT.value)
  if _SOURCE.value == 'control':
    return sft_sources.ControlSource(_MANIFEST.value, _CONTROL.value, _IMAGE_ROOT.value)
  if _SOURCE.value == 'rendered_text':
    return sft_sources.RenderedTextSource(_MANIFEST.value, _IMAGE_ROOT.value)
  return JsonlSource(_MANIFEST.value, _IMAGE_ROOT.value)


def main(argv):
  config = preprocess.PreprocessConfig(
      output_dir=os.path.join(_OUTPUT_DIR.value, _SPLIT.value),
      text_vocabulary=_TEXT_VOCABULARY.value, image_tokenizer=_IMAGE_TOKENIZER.value,
      num_shards=_NUM_SHARDS.value, batch_size=_BATCH_SIZE.value,
      captions_per_image=_CAPTIONS_PER_IMAGE.value, max_text_tokens=_MAX_TEXT_TOKENS.value,
      min_image_side=_MIN_IMAGE_SIDE.value, num_sentinels=_NUM_SENTINELS.value, clip=_CLIP.value,
      max_document_tokens=_MAX_DOCUMENT_TOKENS.value)
  options = PipelineOptions(argv[1:])
  run_pipeline = sft_preprocess.run if _SOURCE.value in INSTRUCTION_SOURCES else preprocess.run
  path = run_pipeline(make_source(), config, options)
  with open(path, encoding='utf-8') as f:
    manifest = json.load(f)
  logging.info('Wrote %d documents; skipped %d bad records: %s', manifest['num_documents'],
               manifest['num_bad'], manifest['bad_by_reason'])
  print(path)
  print(json.dumps({k: manifest[k] for k in ('num_documents', 'num_bad', 'bad_by_reason')}))


def run():
  """Entry point of tools/preprocess.py and `cm3leon-preprocess`."""
  cli.run_app(main, __doc__, flags_parser=beam.parse_known_flags)


if __name__ == '__main__':
  run()
