"""tools/eval_captioning.py and tools/eval_vqa.py end to end on a tiny random model and files the
tests write: CIDEr-D of the tool's captions equals pycocoevalcap's (its PTB tokenizer and Cider)
on the same captions, and the VQA tool writes the official formats with accuracies in range."""

import json

import numpy as np
import pytest
from PIL import Image

import eval_helpers
from helpers import run_tool
from cm3leon_jax.data.synthetic import SyntheticConfig, SyntheticDataset
from cm3leon_jax.evaluation import caption_eval


@pytest.fixture(scope='module')
def parts(tmp_path_factory, shared_tokenizers):
  return eval_helpers.shared_parts(tmp_path_factory, shared_tokenizers)


def _synthetic(count):
  return list(SyntheticDataset(SyntheticConfig(resolution=32)).examples(30_000_000, count))


@pytest.mark.slow
def test_captioning_cider_equals_pycocoevalcap_on_the_tools_captions(parts, tmp_path):
  from pycocoevalcap.cider.cider import Cider  # pylint: disable=g-import-not-at-top
  from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer  # pylint: disable=g-import-not-at-top
  examples = _synthetic(12)
  images, annotations = [], []
  for i, example in enumerate(examples[:4]):
    Image.fromarray(example.image).save(tmp_path / f'{i}.png')
    images.append({'id': i, 'file_name': f'{i}.png'})
    # Its own caption and two others' (so references differ in their n-grams).
    for k, caption in enumerate((example.caption, examples[4 + i].caption,
                                 examples[8 + i].caption.upper() + '.')):
      annotations.append({'id': 10 * i + k, 'image_id': i, 'caption': caption})
  (tmp_path / 'captions.json').write_text(json.dumps({'images': images,
                                                      'annotations': annotations}))
  out = tmp_path / 'out'
  run_tool(['tools/eval_captioning.py', f'--checkpoint={parts["model"]}',
            f'--annotations={tmp_path / "captions.json"}', f'--image_dir={tmp_path}',
            f'--output_dir={out}', '--max_tokens=12'])
  result = json.loads((out / 'result.json').read_text())
  captions = json.loads((out / 'captions.json').read_text())
  assert result['count'] == 4 and [c['image_id'] for c in captions] == ['0', '1', '2', '3']
  assert result['ptb_backend'] == 'java'
  # A random model's captions score near 0; captions that share n-grams with the references
  # score well above it (scored by the function the tool scores with; the tool's --results
  # option feeds it given captions). Both equal the COCO evaluation's.
  scored = [(result, captions)]
  given = [{'image_id': str(i), 'caption': f'{examples[4 + i].caption}, seen from above!'}
           for i in range(4)]
  given[3]['caption'] = 'a photo'
  items = list(caption_eval.coco_from_json(str(tmp_path / 'captions.json'), str(tmp_path)))
  scored.append((caption_eval.score_captions(items, [g['caption'] for g in given]), given))
  assert scored[1][0]['cider_d'] > 1.0 and scored[1][0]['ptb_backend'] == 'java'
  references = {str(a['image_id']): [] for a in annotations}
  for a in annotations:
    references[str(a['image_id'])].append({'caption': a['caption']})
  tokenizer = PTBTokenizer()
  gts = tokenizer.tokenize(references)
  for got, candidates in scored:
    res = tokenizer.tokenize({c['image_id']: [{'caption': c['caption']}] for c in candidates})
    want, want_per_image = Cider().compute_score(gts, res)
    assert got['cider_d'] == pytest.approx(want, rel=1e-9, abs=1e-12)
    assert [got['per_image'][k] for k in ('0', '1', '2', '3')] == pytest.approx(
        list(want_per_image), rel=1e-9, abs=1e-12)


@pytest.mark.slow
def test_vqa_tool_writes_the_official_formats(parts, tmp_path):
  examples = _synthetic(3)
  questions, annotations = [], []
  for i, example in enumerate(examples):
    Image.fromarray(example.image).save(tmp_path / f'COCO_val2014_{i:012d}.jpg', quality=95)
    for k, (question, answer, kind) in enumerate((('What colour is it?', 'red', 'other'),
                                                  ('How many shapes?', 'two', 'number'))):
      question_id = 10 * i + k
      questions.append({'question_id': question_id, 'image_id': i, 'question': question})
      annotations.append({'question_id': question_id, 'answer_type': kind,
                          'answers': [{'answer': answer, 'answer_id': j} for j in range(10)]})
  (tmp_path / 'q.json').write_text(json.dumps({'questions': questions}))
  (tmp_path / 'a.json').write_text(json.dumps({'annotations': annotations}))
  out = tmp_path / 'out'
  run_tool(['tools/eval_vqa.py', f'--checkpoint={parts["model"]}', f'--questions={tmp_path}/q.json',
            f'--annotations={tmp_path}/a.json', f'--image_dir={tmp_path}', f'--output_dir={out}'])
  answers = json.loads((out / 'answers.json').read_text())
  result = json.loads((out / 'result.json').read_text())
  assert [a['question_id'] for a in answers] == [q['question_id'] for q in questions]
  assert all(isinstance(a['answer'], str) for a in answers)
  assert result['count'] == 6 and set(result['per_answer_type']) == {'other', 'number'}
  assert 0 <= result['overall'] <= 100
  assert np.mean(list(result['per_question'].values())) == pytest.approx(result['overall'])
