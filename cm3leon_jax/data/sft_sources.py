"""Sources of instruction records for supervised fine-tuning, behind the sources' interface.

An instruction record names its task and carries the template's fields and its images by role;
the preprocessing pipeline fills the task's template (``data.sft_templates``) and tokenizes it into
one document of parts:

  task               fields                               images
  edit               instruction                          input, output
  control:<kind>     caption                              control (or computed), output
  ground             caption, objects [(name, box)]       output
  render             text                                 output
  caption            caption, prompt                      image
  vqa                question, answer, style              image

Sources: ``SyntheticInstructionSource`` (every task over the built-in scenes), and the data users
bring: ``InstructPix2PixSource`` (JSONL of input image, instruction, output image),
``ControlSource`` (JSONL of image, optional control image, caption; canny edges computed with
OpenCV when the record has no control image), ``RenderedTextSource`` (JSONL of images with the
text they show), ``CaptionInstructions`` (any image-caption source,
e.g. MS-COCO captions, as captioning documents) and ``VqaJsonSource`` (VQAv2's question and
annotation files). Like the caption sources they read any range of
records and never raise on a bad one: a line that cannot be parsed comes back with ``error`` set.
"""

import abc
import dataclasses
import json
import os
from typing import Any, Dict, Iterator, Optional, Tuple

import numpy as np

from cm3leon_jax.data import sft_synthetic
from cm3leon_jax.data import sft_templates as templates
from cm3leon_jax.data.sources import SYNTHETIC_SPLIT_OFFSETS, RawImage
from cm3leon_jax.data.synthetic import SyntheticConfig, SyntheticDataset

SYNTHETIC_TASKS = ('edit', 'control:canny', 'control:segmentation', 'ground', 'caption', 'vqa')
# Canny's hysteresis thresholds as ControlNet's canny annotator uses them.
CANNY_LOW, CANNY_HIGH = 100, 200


@dataclasses.dataclass
class InstructionRecord:
  """One raw instruction example.

  Attributes:
    index: position in the source (orders the store).
    id: stable, unique name for the store and error reports.
    task: see the module's table ('edit', 'control:canny', 'vqa', ...).
    fields: the template's fields.
    images: raw images by role ('input', 'output', 'control', 'image').
    metadata: small JSON-able facts kept with the document.
    error: set by the source when it could not parse the record.
    variant: which of the source record's documents this is (a COCO image's k-th caption).
  """

  index: int
  id: str
  task: str = ''
  fields: Dict[str, Any] = dataclasses.field(default_factory=dict)
  images: Dict[str, RawImage] = dataclasses.field(default_factory=dict)
  metadata: Dict[str, Any] = dataclasses.field(default_factory=dict)
  error: Optional[str] = None
  variant: int = 0


def template_parts(record: InstructionRecord, resolution: int) -> Tuple[templates.Part, ...]:
  """The task's template filled with the record's fields; boxes are in pixels of the image as
  preprocessed (`resolution` square). Raises TemplateError naming the record."""
  task, fields, rid = record.task, record.fields, record.id
  try:
    if task == 'edit':
      return templates.edit(fields.get('instruction'), rid)
    if task.startswith('control:'):
      return templates.control(task.split(':', 1)[1], fields.get('caption'), rid)
    if task == 'ground':
      return templates.grounded(fields.get('caption'), fields.get('objects') or (), resolution, rid)
    if task == 'render':
      return templates.render_text(fields.get('text'), rid)
    if task == 'caption':
      return templates.caption(fields.get('caption'), fields.get('prompt', 'plain'), rid)
    if task == 'vqa':
      return templates.vqa(fields.get('question'), fields.get('answer'),
                           int(fields.get('style', 0)), rid)
  except (TypeError, ValueError) as e:
    if isinstance(e, templates.TemplateError):
      raise
    raise templates.TemplateError(f'Record {rid}: malformed fields for task {task!r}: {e}') from e
  raise templates.TemplateError(f'Record {rid}: unknown task {task!r}; choose one of '
                                f'edit, control:<kind>, ground, render, caption, vqa.')


def canny_edges(pixels: np.ndarray, low: int = CANNY_LOW, high: int = CANNY_HIGH) -> np.ndarray:
  """[H, W, 3] uint8 edge map (white on black) of an RGB image, by OpenCV's Canny."""
  import cv2  # pylint: disable=g-import-not-at-top
  grey = cv2.cvtColor(np.ascontiguousarray(pixels, np.uint8), cv2.COLOR_RGB2GRAY)
  return np.repeat(cv2.Canny(grey, low, high)[..., None], 3, axis=-1)


class SyntheticInstructionSource:
  """`count` instruction records of one task over the built-in scenes of a split.

  Captions alternate between the plain and the "Describe the given picture." template, VQA
  between its three wordings. Edits are drawn per scene; a scene that admits none (about 1 in 150)
  comes back as a record with an error, counted by the pipeline.
  """

  def __init__(self, task: str, count: int, split: str = 'train',
               config: SyntheticConfig = SyntheticConfig()):
    if task not in SYNTHETIC_TASKS:
      raise ValueError(f'Unknown synthetic instruction task {task!r}; choose one of '
                       f'{SYNTHETIC_TASKS}.')
    if split not in SYNTHETIC_SPLIT_OFFSETS:
      raise ValueError(f'Unknown synthetic split {split!r}; choose one of '
                       f'{sorted(SYNTHETIC_SPLIT_OFFSETS)}.')
    self.task, self.count, self.split, self.config = task, count, split, config
    self._dataset = SyntheticDataset(config)

  def num_records(self) -> int:
    return self.count

  def read(self, start: int, stop: int) -> Iterator[InstructionRecord]:
    offset = SYNTHETIC_SPLIT_OFFSETS[self.split]
    for index in range(start, stop):
      scene = offset + index
      record = InstructionRecord(index, f'synthetic-{self.task}/{self.split}/{scene}', self.task,
                                 metadata={'synthetic_index': scene})
      self._fill(record, scene)
      yield record

  def _fill(self, record: InstructionRecord, scene: int) -> None:
    if self.task == 'edit':
      edit = sft_synthetic.edit_example(self._dataset, scene)
      if edit is None:
        record.error = f'scene {scene} admits no edit'
        return
      record.fields = {'instruction': edit.instruction}
      record.images = {'input': edit.before.image, 'output': edit.after.image}
      record.metadata['edit_kind'] = edit.kind
      return
    example = self._dataset[scene]
    if self.task.startswith('control:'):
      kind = self.task.split(':', 1)[1]
      record.fields = {'caption': example.caption}
      record.images = {'control': sft_synthetic.control_image(example, kind),
                       'output': example.image}
    elif self.task == 'ground':
      record.fields = {'caption': example.caption,
                       'objects': sft_synthetic.grounding_objects(example)}
      record.images = {'output': example.image}
    elif self.task == 'caption':
      record.fields = {'caption': example.caption,
                       'prompt': ('plain', 'describe')[record.index % 2]}
      record.images = {'image': example.image}
    else:  # vqa
      question, answer, kind = sft_synthetic.question(self._dataset, scene)
      record.fields = {'question': question, 'answer': answer, 'style': record.index % 3}
      record.images = {'image': example.image}
      record.metadata['question_type'] = kind

  def describe(self) -> Dict[str, Any]:
    return {'source': 'synthetic_instructions', 'task': self.task, 'split': self.split,
            'count': self.count, 'config': dataclasses.asdict(self.config)}


class _JsonlInstructions(abc.ABC):
  """A JSONL manifest, one record per line; image paths are relative to `image_root` (default:
  the manifest's folder)."""

  def __init__(self, manifest: str, image_root: Optional[str] = None):
    self.manifest = os.fspath(manifest)
    with open(self.manifest, 'rb') as f:
      self._lines = [line for line in f.read().split(b'\n') if line.strip()]
    self._root = os.path.abspath(image_root or os.path.dirname(self.manifest))

  def num_records(self) -> int:
    return len(self._lines)

  def read(self, start: int, stop: int) -> Iterator[InstructionRecord]:
    for index in range(start, stop):
      record = InstructionRecord(index, f'{os.path.basename(self.manifest)}:{index + 1}')
      try:
        line = json.loads(self._lines[index].decode('utf-8'))
        if not isinstance(line, dict):
          raise ValueError('the line is not a JSON object')
        self._fill(record, line)
      except (ValueError, UnicodeDecodeError) as e:
        record.error = f'line {index + 1} of {self.manifest}: {e}'
      yield record

  def _path(self, value) -> Optional[str]:
    return None if value in (None, '') else os.path.join(self._root, str(value))

  @abc.abstractmethod
  def _fill(self, record: InstructionRecord, line: Dict[str, Any]) -> None:
    """Set the record's task, fields, images and metadata from its parsed line."""


class InstructPix2PixSource(_JsonlInstructions):
  """Editing pairs: ``{"input_image": "a.png", "instruction": "...", "output_image": "b.png"}``."""

  def _fill(self, record, line):
    record.task = 'edit'
    record.fields = {'instruction': line.get('instruction')}
    record.images = {name: self._path(line.get(f'{name}_image')) for name in ('input', 'output')}
    record.metadata = {'input_image': line.get('input_image'),
                       'output_image': line.get('output_image')}

  def describe(self) -> Dict[str, Any]:
    return {'source': 'instruct_pix2pix_jsonl', 'manifest': os.path.abspath(self.manifest),
            'count': self.num_records()}


class ControlSource(_JsonlInstructions):
  """Image-controlled generation: ``{"image": "a.png", "caption": "...", "control_image":
  "edges.png"}``; `control` names the control's kind (a key of sft_templates.CONTROL_PHRASES).
  Without ``control_image`` a canny record's edges are computed from the image."""

  def __init__(self, manifest: str, control: str = 'canny', image_root: Optional[str] = None):
    if control not in templates.CONTROL_PHRASES:
      raise ValueError(f'Unknown control {control!r}; choose one of '
                       f'{sorted(templates.CONTROL_PHRASES)}.')
    super().__init__(manifest, image_root)
    self.control = control

  def _fill(self, record, line):
    record.task = f'control:{self.control}'
    record.fields = {'caption': line.get('caption')}
    record.images = {'output': self._path(line.get('image'))}
    control = self._path(line.get('control_image'))
    if control is not None:
      record.images['control'] = control
    record.metadata = {'image': line.get('image'), 'control_image': line.get('control_image')}

  def describe(self) -> Dict[str, Any]:
    return {'source': 'control_jsonl', 'manifest': os.path.abspath(self.manifest),
            'control': self.control, 'count': self.num_records()}


class RenderedTextSource(_JsonlInstructions):
  """Text rendering: ``{"image": "sign.png", "text": "STOP"}``, images showing their text (an
  OCR dataset's images with their transcriptions)."""

  def _fill(self, record, line):
    record.task = 'render'
    record.fields = {'text': line.get('text')}
    record.images = {'output': self._path(line.get('image'))}
    record.metadata = {'image': line.get('image')}

  def describe(self) -> Dict[str, Any]:
    return {'source': 'rendered_text_jsonl', 'manifest': os.path.abspath(self.manifest),
            'count': self.num_records()}


class CaptionInstructions:
  """Captioning documents of an image-caption source (``data.sources``: MS-COCO captions,
  JSONL, synthetic), one per caption, cycling through the given caption prompts."""

  def __init__(self, source, prompts=('plain', 'describe')):
    unknown = [p for p in prompts if p not in templates.CAPTION_PROMPTS]
    if not prompts or unknown:
      raise ValueError(f'Caption prompts must be among {sorted(templates.CAPTION_PROMPTS)}; got '
                       f'{list(prompts)}.')
    self.source, self.prompts = source, tuple(prompts)

  def num_records(self) -> int:
    return self.source.num_records()

  def read(self, start: int, stop: int) -> Iterator[InstructionRecord]:
    for raw in self.source.read(start, stop):
      if raw.error or not raw.texts:
        yield InstructionRecord(raw.index, raw.id, 'caption', metadata=dict(raw.metadata),
                                error=raw.error or 'the record has no caption')
        continue
      for k, text in enumerate(raw.texts):
        record_id = raw.id if len(raw.texts) == 1 else f'{raw.id}#{k}'
        prompt = self.prompts[(raw.index + k) % len(self.prompts)]
        yield InstructionRecord(raw.index, record_id, 'caption',
                                {'caption': text, 'prompt': prompt}, {'image': raw.image},
                                dict(raw.metadata), variant=k)

  def describe(self) -> Dict[str, Any]:
    return {'source': 'caption_instructions', 'prompts': list(self.prompts),
            'captions': self.source.describe()}


class VqaJsonSource:
  """VQAv2-style files: ``{"questions": [{"question_id", "image_id", "question"}]}`` and
  ``{"annotations": [{"question_id", "multiple_choice_answer"}]}``; images found by
  `image_pattern` (VQAv2's COCO names by default) under `image_root`. Each question becomes a VQA
  document in the three wordings in turn, answered with its most common human answer."""

  def __init__(self, questions: str, annotations: str, image_root: str,
               image_pattern: str = 'COCO_{subtype}_{image_id:012d}.jpg'):
    try:
      with open(questions, encoding='utf-8') as f:
        question_file = json.load(f)
      self.questions = sorted(question_file['questions'], key=lambda q: q['question_id'])
      with open(annotations, encoding='utf-8') as f:
        answers = {a['question_id']: a for a in json.load(f)['annotations']}
    except (KeyError, TypeError, ValueError) as e:
      raise ValueError(f'{questions} / {annotations} are not VQAv2-style question and annotation '
                       f'files (missing or malformed {e}).') from e
    self._answers, self.image_root, self.image_pattern = answers, image_root, image_pattern
    self._subtype = question_file.get('data_subtype', '')
    self._paths = (questions, annotations)

  def num_records(self) -> int:
    return len(self.questions)

  def read(self, start: int, stop: int) -> Iterator[InstructionRecord]:
    for index in range(start, stop):
      question = self.questions[index]
      record = InstructionRecord(index, f'vqa/{question["question_id"]}', 'vqa',
                                 metadata={'question_id': question['question_id'],
                                           'image_id': question['image_id']})
      annotation = self._answers.get(question['question_id'])
      if annotation is None:
        record.error = f'question {question["question_id"]} has no annotation'
      else:
        record.fields = {'question': question.get('question'),
                         'answer': annotation.get('multiple_choice_answer'),
                         'style': index % templates.VQA_STYLES}
        name = self.image_pattern.format(subtype=self._subtype, image_id=question['image_id'])
        record.images = {'image': os.path.join(self.image_root, name)}
      yield record

  def describe(self) -> Dict[str, Any]:
    return {'source': 'vqa_json', 'questions': os.path.abspath(self._paths[0]),
            'annotations': os.path.abspath(self._paths[1]), 'count': self.num_records()}
