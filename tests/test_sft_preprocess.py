"""Instruction records through the Beam pipeline into a store: every synthetic task's template
with its images' codes, the files users bring (edit pairs, control images), and bad records
counted and listed."""

import json
import os

import numpy as np
from PIL import Image
import pytest

import data_helpers
from cm3leon_jax.data import images as image_lib
from cm3leon_jax.data import sft_preprocess, sft_sources
from cm3leon_jax.data import sft_templates as templates
from cm3leon_jax.data.store import IMAGE_PART, TEXT_PART, DocumentStore
from cm3leon_jax.tokenizers.image import ImageTokenizer

PER_TASK = 4


class ChainSource:
  """Records of several sources one after another (indices renumbered)."""

  def __init__(self, *sources):
    self.records = [r for s in sources for r in s.read(0, s.num_records())]
    for index, record in enumerate(self.records):
      record.index = index

  def num_records(self):
    return len(self.records)

  def read(self, start, stop):
    yield from self.records[start:stop]

  def describe(self):
    return {'source': 'chain', 'count': len(self.records)}


@pytest.fixture(scope='module')
def synthetic_store(shared_tokenizers, tmp_path_factory):
  source = ChainSource(*(sft_sources.SyntheticInstructionSource(task, PER_TASK)
                         for task in sft_sources.SYNTHETIC_TASKS))
  folder = tmp_path_factory.mktemp('sft') / 'train'
  sft_preprocess.run(source, data_helpers.preprocess_config(folder, *shared_tokenizers))
  return source, DocumentStore(str(folder))


def test_every_synthetic_task_becomes_its_template_with_its_images_codes(synthetic_store,
                                                                         shared_tokenizers):
  source, store = synthetic_store
  documents = {d.id: d for d in store.documents()}
  records = {r.id: r for r in source.records}
  assert store.manifest['num_bad'] == 0 and set(documents) == set(records)
  assert store.manifest['format_version'] == 2
  tokenizer = ImageTokenizer.load(shared_tokenizers[1])
  vocab = store.vocabulary()
  tasks_seen = set()
  for record_id, document in documents.items():
    record = records[record_id]
    parts = sft_sources.template_parts(record, 32)
    assert document.text == templates.render(parts)
    assert document.metadata['task'] == record.task
    tasks_seen.add(record.task)
    assert [p.kind for p in document.parts] == [
        IMAGE_PART if isinstance(p, templates.ImagePart) else TEXT_PART for p in parts]
    assert [p.output for p in document.parts] == [p.output for p in parts]
    roles = iter(templates.image_names(parts))
    for part, template_part in zip(document.parts, parts):
      if part.kind == TEXT_PART:
        np.testing.assert_array_equal(part.ids, vocab.encode(template_part.text))
        continue
      pixels = image_lib.preprocess(image_lib.load_array(record.images[next(roles)]), 32)
      np.testing.assert_array_equal(part.ids, np.asarray(tokenizer.encode(pixels[None])).ravel())
  assert tasks_seen == set(sft_sources.SYNTHETIC_TASKS)


def _save(path, pixels):
  Image.fromarray(np.asarray(pixels, np.uint8)).save(path)
  return os.path.basename(path)


def _scene(seed, size=32):
  pixels = np.full((size, size, 3), 240, np.uint8)
  rng = np.random.default_rng(seed)
  x, y = rng.integers(2, size // 2, 2)
  pixels[y:y + size // 3, x:x + size // 3] = (200, 30, 30)
  return pixels


def _write_jsonl(path, lines):
  path.write_text(''.join((line if isinstance(line, str) else json.dumps(line)) + '\n'
                          for line in lines))
  return path


def test_users_edit_pairs_and_control_images_with_bad_records_counted(tmp_path, shared_tokenizers):
  a, b = _save(tmp_path / 'a.png', _scene(0)), _save(tmp_path / 'b.png', _scene(1))
  big = _save(tmp_path / 'big.png', _scene(2, size=48))
  edits = _write_jsonl(tmp_path / 'edits.jsonl', [
      {'input_image': a, 'instruction': 'turn the square blue', 'output_image': b},
      {'input_image': a, 'output_image': b},  # No instruction.
      {'input_image': a, 'instruction': 'grow it', 'output_image': big},  # Sizes differ.
      '{"input_image": "a.png", broken',
      {'input_image': a, 'instruction': 'remove it', 'output_image': 'missing.png'},
      {'input_image': a, 'instruction': ' '.join(['turn the red square blue'] * 12),
       'output_image': b},  # Longer than the 80-token context.
  ])
  controls = _write_jsonl(tmp_path / 'controls.jsonl', [
      {'image': a, 'caption': 'a red square'},  # Canny computed from the image.
      {'image': a, 'caption': 'a red square', 'control_image': b},
      {'image': a, 'caption': 'a red square', 'control_image': big},  # Sizes differ.
  ])
  signs = _write_jsonl(tmp_path / 'signs.jsonl', [
      {'image': a, 'text': 'stop'}, {'image': a, 'text': ''}])  # The second shows no text.
  boxes = sft_sources.InstructionRecord(0, 'boxes/0', 'ground', {
      'caption': 'a square', 'objects': [('square', (4, 4, 40, 12))]}, {'output': _scene(3)})
  # 64x32: kept at scale 1, 16 columns cropped on the left; (4, 4, 14, 12) then reads 0-255.
  wide = sft_sources.InstructionRecord(1, 'boxes/1', 'ground', {
      'caption': 'a square', 'objects': [['square', [20, 4, 30, 12]]]},
      {'output': np.full((32, 64, 3), 200, np.uint8)})
  source = ChainSource(sft_sources.InstructPix2PixSource(str(edits)),
                       sft_sources.ControlSource(str(controls)),
                       sft_sources.RenderedTextSource(str(signs)), _Records([boxes, wide]))
  folder = tmp_path / 'store' / 'train'
  sft_preprocess.run(source, data_helpers.preprocess_config(folder, *shared_tokenizers,
                                                            max_document_tokens=80))
  store = DocumentStore(str(folder))
  assert store.manifest['num_documents'] == 5
  (sign,) = [d for d in store.documents() if d.id == 'signs.jsonl:1']
  assert sign.text == 'draw "stop" <break> {output}'
  (grounded,) = [d for d in store.documents() if d.id == 'boxes/1']
  assert grounded.text == ('Generate high quality image of a square with segmentations square at '
                           '(32, 32, 112, 96) <break> {output}')
  assert {k: v for k, v in store.manifest['bad_by_reason'].items() if v} == {
      'bad_template': 3, 'image_size_mismatch': 2, 'unreadable_record': 1, 'bad_image': 1,
      'document_too_long': 1}
  bad = [json.loads(line) for line in (folder / 'bad_records.jsonl').read_text().splitlines()]
  reasons = {b['id']: b['reason'] for b in bad}
  assert reasons == {'edits.jsonl:2': 'bad_template', 'edits.jsonl:3': 'image_size_mismatch',
                     'edits.jsonl:4': 'unreadable_record', 'edits.jsonl:5': 'bad_image',
                     'edits.jsonl:6': 'document_too_long',
                     'controls.jsonl:3': 'image_size_mismatch', 'signs.jsonl:2': 'bad_template',
                     'boxes/0': 'bad_template'}
  assert 'instruction' in next(b['message'] for b in bad if b['id'] == 'edits.jsonl:2')
  assert '(4, 4, 40, 12)' in next(b['message'] for b in bad if b['id'] == 'boxes/0')
  computed = next(d for d in store.documents() if d.id == 'controls.jsonl:1')
  tokenizer = ImageTokenizer.load(shared_tokenizers[1])
  edges = sft_sources.canny_edges(_scene(0))
  assert edges.any() and not edges.all()
  want = np.asarray(tokenizer.encode(image_lib.preprocess(image_lib.load_array(edges), 32)[None]))
  np.testing.assert_array_equal(computed.parts[1].ids, want.ravel())


class _Records:
  def __init__(self, records):
    self.records = records

  def num_records(self):
    return len(self.records)

  def read(self, start, stop):
    yield from self.records[start:stop]


def test_coco_captions_become_captioning_documents_one_per_caption(tmp_path, shared_tokenizers):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from cm3leon_jax.data.sources import CocoCaptionsSource  # pylint: disable=g-import-not-at-top
  folder = tmp_path / 'coco' / 'train'
  with tfds.testing.mock_data(num_examples=3):
    coco = CocoCaptionsSource('train')
    raw = list(coco.read(0, coco.num_records()))
    sft_preprocess.run(sft_sources.CaptionInstructions(coco),
                       data_helpers.preprocess_config(folder, *shared_tokenizers))
  documents = {d.id: d for d in DocumentStore(str(folder)).documents()}
  want = {}
  for record in raw:
    for k, text in enumerate(record.texts):
      prompt = ('plain', 'describe')[(record.index + k) % 2]
      want[f'{record.id}#{k}' if len(record.texts) > 1 else record.id] = templates.render(
          templates.caption(text, prompt))
  assert {i: d.text for i, d in documents.items()} == want and len(want) > 3


def test_vqa_files_become_vqa_documents_in_the_three_wordings(tmp_path, shared_tokenizers):
  for image_id in (1, 2):
    _save(tmp_path / f'COCO_val2014_{image_id:012d}.jpg', _scene(image_id))
  questions = [{'question_id': 10 + i, 'image_id': image_id, 'question': f'what is {i}?'}
               for i, image_id in enumerate((1, 2, 1, 2, 3, 1))]  # Image 3 does not exist.
  annotations = [{'question_id': 10 + i, 'multiple_choice_answer': f'answer {i}'}
                 for i in range(5)]  # Question 15 has no annotation.
  (tmp_path / 'q.json').write_text(json.dumps({'data_subtype': 'val2014', 'questions': questions}))
  (tmp_path / 'a.json').write_text(json.dumps({'annotations': annotations}))
  source = sft_sources.VqaJsonSource(str(tmp_path / 'q.json'), str(tmp_path / 'a.json'),
                                     str(tmp_path))
  folder = tmp_path / 'vqa' / 'train'
  sft_preprocess.run(source, data_helpers.preprocess_config(folder, *shared_tokenizers))
  store = DocumentStore(str(folder))
  texts = {d.id: d.text for d in store.documents()}
  assert texts == {
      'vqa/10': 'Question: what is 0? Answer: answer 0. <break> {image}',
      'vqa/11': 'Question: what is 1?\nanswer 1 <break> {image}',
      'vqa/12': 'Question: what is 2? The answer is answer 2. <break> {image}',
      'vqa/13': 'Question: what is 3? Answer: answer 3. <break> {image}'}
  assert {k: v for k, v in store.manifest['bad_by_reason'].items() if v} == {
      'unreadable_record': 1, 'bad_image': 1}
  with pytest.raises(ValueError, match='not VQAv2-style'):
    (tmp_path / 'bad.json').write_text(json.dumps({'questions': [{'image_id': 1}]}))
    sft_sources.VqaJsonSource(str(tmp_path / 'bad.json'), str(tmp_path / 'a.json'), str(tmp_path))
