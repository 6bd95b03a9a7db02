"""Image-to-text evaluation: COCO captioning scored with CIDEr-D, VQAv2-style question answering
scored with the official VQA accuracy.

The data readers return plain records (an image as uint8 pixels, its references or question);
``caption_all`` and ``answer_all`` run a model over them in batches through
``decoding.generation``.
"""

import dataclasses
import json
import os
import re
from typing import Dict, Iterator, List, Optional, Sequence

import numpy as np
from absl import logging

from cm3leon_jax.data import images as image_lib
from cm3leon_jax.data.sources import CocoCaptionsSource
from cm3leon_jax.decoding import DecodingConfig, generation
from cm3leon_jax.decoding.pretrained import Pretrained
from cm3leon_jax.evaluation import cider, ptb_tokenizer


@dataclasses.dataclass
class CaptionedImage:
  """An image with its reference captions (COCO: five)."""

  image_id: str
  image: np.ndarray  # uint8 [H, W, 3]
  references: List[str]


@dataclasses.dataclass
class Question:
  """A VQAv2 question with its image and, for scoring, its annotation."""

  question_id: int
  image: np.ndarray
  question: str
  annotation: Dict


def coco_from_tfds(split: str = 'test', data_dir: Optional[str] = None,
                   limit: Optional[int] = None) -> Iterator[CaptionedImage]:
  """Images of a tfds ``coco_captions`` split (Karpathy's test split by default, 5,000 images)."""
  source = CocoCaptionsSource(split, data_dir)
  count = source.num_records() if limit is None else min(limit, source.num_records())
  for record in source.read(0, count):
    references = [t for t in record.texts if t.strip()]
    if record.error or not references:
      logging.warning('Skipping %s: %s', record.id, record.error or 'no reference caption')
      continue
    yield CaptionedImage(record.id, np.asarray(record.image), references)


def _read_json(path: str, what: str):
  try:
    with open(path, encoding='utf-8') as f:
      return json.load(f)
  except FileNotFoundError:
    raise FileNotFoundError(f'{what} {path} does not exist.') from None
  except json.JSONDecodeError as e:
    raise ValueError(f'{what} {path} is not valid JSON ({e}).') from e


def _load(image_dir: str, file_name: str) -> Optional[np.ndarray]:
  try:
    return np.asarray(image_lib.load_image(os.path.join(image_dir, file_name)))
  except image_lib.ImageError as e:
    logging.warning('Skipping %s: %s', file_name, e)
    return None


def coco_from_json(annotations: str, image_dir: str,
                   limit: Optional[int] = None) -> Iterator[CaptionedImage]:
  """Images of a COCO-style captions file ({"images": [{"id", "file_name"}], "annotations":
  [{"image_id", "caption"}]}) found in `image_dir`."""
  data = _read_json(annotations, 'Captions file')
  references: Dict[int, List[str]] = {}
  for annotation in data.get('annotations', []):
    references.setdefault(annotation['image_id'], []).append(annotation['caption'])
  for entry in data.get('images', [])[:limit]:
    texts = [t for t in references.get(entry['id'], []) if t.strip()]
    image = _load(image_dir, entry['file_name'])
    if image is not None and texts:
      yield CaptionedImage(str(entry['id']), image, texts)


def vqa_questions(questions: str, annotations: str, image_dir: str,
                  image_pattern: str = 'COCO_val2014_{image_id:012d}.jpg',
                  limit: Optional[int] = None) -> Iterator[Question]:
  """VQAv2-style questions ({"questions": [{"question_id", "image_id", "question"}]}) with their
  annotations ({"annotations": [{"question_id", "answers": [{"answer"}], "answer_type"}]}); image
  files are `image_pattern` formatted with the image id, in `image_dir`."""
  by_id = {a['question_id']: a for a in _read_json(annotations, 'Annotations file')['annotations']}
  loaded: Dict[int, Optional[np.ndarray]] = {}
  for entry in _read_json(questions, 'Questions file')['questions'][:limit]:
    if entry['question_id'] not in by_id:
      raise ValueError(f'Question {entry["question_id"]} has no annotation in {annotations}.')
    image_id = entry['image_id']
    if image_id not in loaded:
      loaded[image_id] = _load(image_dir, image_pattern.format(image_id=image_id))
    if loaded[image_id] is not None:
      yield Question(entry['question_id'], loaded[image_id], entry['question'],
                     by_id[entry['question_id']])


def _image_ids(pretrained: Pretrained, images: Sequence[np.ndarray]) -> np.ndarray:
  resolution = pretrained.image_tokenizer.config.resolution
  pixels = np.stack([image_lib.preprocess(image_lib.load_array(i), resolution) for i in images])
  return pretrained.encode_images(pixels)


def caption_all(pretrained: Pretrained, images: Sequence[np.ndarray], config: DecodingConfig,
                batch_size: int = 16, max_tokens: int = 32) -> List[str]:
  """One caption per image (the first of `config.num_decodes`), by CM3 infilling."""
  out = []
  for start in range(0, len(images), batch_size):
    batch = images[start:start + batch_size]
    out += [texts[0] for texts in generation.caption(pretrained, _image_ids(pretrained, batch),
                                                     config, max_tokens)]
  return out


def short_answer(text: str) -> str:
  """A generated continuation cut to its answer: up to the first period, newline or `<`."""
  return re.split(r'[.\n<]', text, maxsplit=1)[0].strip()


def answer_all(pretrained: Pretrained, questions: Sequence[Question], template: str,
               config: DecodingConfig, batch_size: int = 16, max_tokens: int = 8) -> List[str]:
  """One short answer per question, continuing ``image <break> template.format(question=q)``."""
  out = []
  for start in range(0, len(questions), batch_size):
    batch = questions[start:start + batch_size]
    prompts = [template.format(question=q.question) for q in batch]
    texts = generation.answer(pretrained, _image_ids(pretrained, [q.image for q in batch]),
                              prompts, config, max_tokens)
    out += [short_answer(t[0]) for t in texts]
  return out


def score_captions(items: Sequence[CaptionedImage], captions: Sequence[str],
                   backend: str = 'auto') -> Dict:
  """CIDEr-D of one caption per image against its references, both PTB-tokenized as the COCO
  evaluation does: {'cider_d', 'per_image': {image_id: score}, 'ptb_backend'}."""
  backend = ptb_tokenizer.backend_in_use(backend)
  tokenized = ptb_tokenizer.tokenize(list(captions) + [r for i in items for r in i.references],
                                     backend)
  candidates = {item.image_id: tokenized[k] for k, item in enumerate(items)}
  references, position = {}, len(items)
  for item in items:
    references[item.image_id] = tokenized[position:position + len(item.references)]
    position += len(item.references)
  score, per_image = cider.cider_d(references, candidates)
  return {'cider_d': score, 'per_image': per_image, 'ptb_backend': backend}
