"""The instruction templates of CM3Leon's supervised fine-tuning (arXiv 2309.02591, Table 5).

A template turns one record's fields into an ordered list of parts, texts and images, which become
one document: ``part <break> part <break> ...``. Each part says whether it is the task's output
(what the model should produce: the edited image, the caption, the answer), so a run can restrict
the loss to outputs (Chameleon's prompt masking) or train on the whole sequence (CM3Leon's choice).

  edit(instruction)     Edit first image following the instruction <break> {input} <break>
                        {instruction} <break> {output}
  control(kind, cap)    Make high quality image from canny edge features <break> {control} <break>
                        {caption} <break> {output}
  grounded(cap, boxes)  Generate high quality image of {caption} with segmentations {obj1} at
                        {loc1}, {obj2} at {loc2} <break> {output}
  render(text)          draw "{text}" <break> {output}
  caption(cap)          {caption} <break> {image}   (or with a "Describe ..." prompt first)
  vqa(q, a, style)      Question: {q} Answer: {a}. <break> {image}   (and two other wordings)

Boxes are written in 0-255 pixel coordinates of the image (the paper's convention, independent of
the resolution), as ``(x0, y0, x1, y1)``. A text part may be *joined* to the text before it (no
<break> between them): VQA's answer is the output inside a text that also holds the question.
"""

import dataclasses
from typing import Mapping, Optional, Sequence, Tuple, Union

BREAK = '<break>'
COORDINATE_RANGE = 256  # Boxes are written in [0, 255] whatever the image's resolution.

CONTROL_PHRASES = {
    'canny': 'canny edge features',
    'segmentation': 'a segmentation map',
    'hed': 'hed features',
    'pose': 'openpose features',
    'depth': 'depth features',
    'normals': '3D norm features',
    'scribble': "children's scribbles",
}
CAPTION_PROMPTS = {
    'plain': None,
    'describe': 'Describe the given picture.',
    'detailed': 'Describe the given picture in very detail.',
    'objects': 'Describe all the objects in the given image in very detail.',
    'long': 'Generate a long caption for the given image.',
}
VQA_STYLES = 3  # 0: "Answer: {a}.", 1: newline then "{a}", 2: "The answer is {a}."


class TemplateError(ValueError):
  """A record whose fields cannot fill a template; the message names the record and the field."""


@dataclasses.dataclass(frozen=True)
class TextPart:
  """A text of the document; `joined` continues the previous text part without a <break>."""

  text: str
  output: bool = False
  joined: bool = False


@dataclasses.dataclass(frozen=True)
class ImagePart:
  """One of the record's images, by its role ('input', 'control', 'output' or 'image')."""

  name: str
  output: bool = False


Part = Union[TextPart, ImagePart]


def render(parts: Sequence[Part]) -> str:
  """The document as the paper writes it: images as ``{name}``, parts joined by `` <break> ``."""
  pieces = []
  for part in parts:
    shown = part.text if isinstance(part, TextPart) else '{' + part.name + '}'
    if isinstance(part, TextPart) and part.joined and pieces:
      pieces[-1] += shown
    else:
      pieces.append(shown)
  return f' {BREAK} '.join(pieces)


def output_order(outputs: Sequence[bool], joined: Sequence[bool]) -> Tuple[int, ...]:
  """Part indices with each group holding an output (a part and the texts joined to it) moved to
  the end, in order: under a loss on outputs only, every output is then predicted after the prompt
  it depends on (a caption after its image, an answer after its question and image)."""
  groups = []
  for index, is_joined in enumerate(joined):
    if is_joined and groups:
      groups[-1].append(index)
    else:
      groups.append([index])
  has_output = [any(outputs[i] for i in group) for group in groups]
  ordered = [g for g, o in zip(groups, has_output) if not o] + [
      g for g, o in zip(groups, has_output) if o]
  return tuple(index for group in ordered for index in group)


def outputs_last(parts: Sequence[Part]) -> Tuple[Part, ...]:
  """The parts in `output_order`."""
  joined = [isinstance(p, TextPart) and p.joined for p in parts]
  return tuple(parts[i] for i in output_order([p.output for p in parts], joined))


def _field(record_id: str, name: str, value: Optional[str]) -> str:
  if value is None or not str(value).strip():
    raise TemplateError(f'Record {record_id}: the template needs a non-empty {name!r}.')
  return ' '.join(str(value).split())


def edit(instruction: str, record_id: str = '?') -> Tuple[Part, ...]:
  """Text-guided image editing (InstructPix2Pix's task): the output is the edited image."""
  return (TextPart('Edit first image following the instruction'), ImagePart('input'),
          TextPart(_field(record_id, 'instruction', instruction)), ImagePart('output', True))


def control(kind: str, caption: str, record_id: str = '?') -> Tuple[Part, ...]:
  """Image-controlled generation from a control image of `kind` (a key of CONTROL_PHRASES)."""
  if kind not in CONTROL_PHRASES:
    raise TemplateError(f'Record {record_id}: unknown control {kind!r}; choose one of '
                        f'{sorted(CONTROL_PHRASES)}.')
  return (TextPart(f'Make high quality image from {CONTROL_PHRASES[kind]}'), ImagePart('control'),
          TextPart(_field(record_id, 'caption', caption)), ImagePart('output', True))


def box_text(box: Sequence[float], resolution: int, record_id: str = '?') -> str:
  """A box (x0, y0, x1, y1), end-exclusive pixels of a `resolution`-pixel image, in 0-255 text."""
  if len(box) != 4:
    raise TemplateError(f'Record {record_id}: a box has 4 numbers (x0, y0, x1, y1), got {box}.')
  x0, y0, x1, y1 = box
  if not (0 <= x0 < x1 <= resolution and 0 <= y0 < y1 <= resolution):
    raise TemplateError(f'Record {record_id}: box {tuple(box)} is not inside the '
                        f'{resolution}x{resolution} image (0 <= x0 < x1 <= {resolution}).')
  # The image's edges 0 and `resolution` map to 0 and 255.
  scale = (COORDINATE_RANGE - 1) / resolution
  values = [round(v * scale) for v in (x0, y0, x1, y1)]
  return '({}, {}, {}, {})'.format(*values)


def grounded(caption: str, objects: Sequence[Tuple[str, Sequence[float]]], resolution: int,
             record_id: str = '?') -> Tuple[Part, ...]:
  """Spatially grounded generation: each (name, box) placed in the image (boxes in pixels)."""
  if not objects:
    raise TemplateError(f'Record {record_id}: grounded generation needs at least one object.')
  places = ', '.join(f'{_field(record_id, "object name", name)} at '
                     f'{box_text(box, resolution, record_id)}' for name, box in objects)
  text = (f'Generate high quality image of {_field(record_id, "caption", caption)} '
          f'with segmentations {places}')
  return TextPart(text), ImagePart('output', True)


def render_text(text: str, record_id: str = '?') -> Tuple[Part, ...]:
  """Text rendering: an image showing `text`."""
  return TextPart(f'draw "{_field(record_id, "text", text)}"'), ImagePart('output', True)


def caption(text: str, prompt: str = 'plain', record_id: str = '?') -> Tuple[Part, ...]:
  """Captioning, plain or after one of the paper's prompts (a key of CAPTION_PROMPTS)."""
  if prompt not in CAPTION_PROMPTS:
    raise TemplateError(f'Record {record_id}: unknown caption prompt {prompt!r}; choose one of '
                        f'{sorted(CAPTION_PROMPTS)}.')
  text = _field(record_id, 'caption', text)
  if CAPTION_PROMPTS[prompt] is None:
    return TextPart(text, True), ImagePart('image')
  return (TextPart(CAPTION_PROMPTS[prompt]), TextPart(f' {text}', True, joined=True),
          ImagePart('image'))


def vqa(question: str, answer: str, style: int = 0, record_id: str = '?') -> Tuple[Part, ...]:
  """Visual question answering in one of the paper's three wordings (`style` 0, 1 or 2)."""
  question = _field(record_id, 'question', question)
  answer = _field(record_id, 'answer', answer)
  wordings = ((f'Question: {question} Answer:', f' {answer}.'),
              (f'Question: {question}', f'\n{answer}'),
              (f'Question: {question} The answer is', f' {answer}.'))
  if not 0 <= style < VQA_STYLES:
    raise TemplateError(f'Record {record_id}: VQA style must be 0, 1 or 2, got {style}.')
  prompt, reply = wordings[style]
  return TextPart(prompt), TextPart(reply, True, joined=True), ImagePart('image')


def image_names(parts: Sequence[Part]) -> Tuple[str, ...]:
  """The record images a template needs, in order."""
  return tuple(p.name for p in parts if isinstance(p, ImagePart))


def require_images(parts: Sequence[Part], available: Mapping[str, object], record_id: str):
  missing = [name for name in image_names(parts) if name not in available]
  if missing:
    raise TemplateError(f'Record {record_id}: the template needs image(s) {missing}, the record '
                        f'has {sorted(available)}.')


def check_images(parts: Sequence[Part], sizes: Mapping[str, Tuple[int, int]],
                 record_id: str = '?') -> None:
  """Every image the parts name is present, and all have the same size (an edit pair, a control
  image and its target are pixel-aligned)."""
  require_images(parts, sizes, record_id)
  distinct = {name: tuple(sizes[name]) for name in image_names(parts)}
  if len(set(distinct.values())) > 1:
    raise TemplateError(f'Record {record_id}: its images differ in size {distinct}; an edit '
                        'pair or a control image and its target must have the same size.')
