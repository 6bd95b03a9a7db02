"""Decoding the instruction tasks of supervised fine-tuning (CM3Leon, arXiv 2309.02591, section 4).

Each prompt is the task's template (``data.sft_templates``) laid out exactly as training laid out
its documents (``data.assembly.parts_tokens``), up to the output:

  edit_images        Edit first image ... <break> {input} <break> {instruction} <break> -> image
                     (three-stream guidance: text 7.5, image 1.5, as the paper)
  controlled_images  Make high quality image from ... <break> {control} <break> {caption} <break>
                     -> image (guidance 3)
  grounded_images    Generate high quality image of {caption} with segmentations ... <break> -> image
  rendered_images    draw "{text}" <break> -> image
  instructed_captions, vqa_answers   text outputs: infilled where the template puts them before
                     the image (loss on every token), continued where training moved them after it
                     (loss on outputs only, ``Pretrained.loss_on``)

Images are given and returned as vocabulary ids [P, N] (``text_to_image``'s ids).
"""

import dataclasses
from typing import List, Mapping, Optional, Sequence, Tuple

import numpy as np

from cm3leon_jax.data import assembly, objective
from cm3leon_jax.data import sft_templates as templates
from cm3leon_jax.decoding import DecodingConfig, DecodingError, generate
from cm3leon_jax.decoding import generation
from cm3leon_jax.decoding.pretrained import Pretrained

# The paper's guidance for editing (text 7.5, image 1.5) and for controlled generation (3).
EDIT_DECODING = DecodingConfig(guidance_scale=7.5, image_guidance_scale=1.5)
CONTROL_DECODING = DecodingConfig(guidance_scale=3.0)
_PLACEHOLDER = 'a'  # Stands for a text output while its span is masked for infilling.


def _check_vocabulary(pretrained: Pretrained) -> None:
  if pretrained.vocab.guidance_style == 'drop':
    raise DecodingError('The instruction templates are laid out with <break> between parts, the '
                        'layout of models trained here; this model uses Chameleon\'s vocabulary.')


def _parts_tokens(pretrained: Pretrained, parts: Sequence[templates.Part],
                  images: Mapping[str, np.ndarray]) -> Tuple[np.ndarray, List[Tuple[int, int]],
                                                              List]:
  """Ids of `parts` as training laid them out, each part's (start, end) in them, and the parts
  in that order."""
  vocab = pretrained.vocab
  layout = assembly.TokenLayout.from_vocabulary(vocab)
  outputs_only = pretrained.loss_on == 'outputs'
  order = (templates.output_order([p.output for p in parts],
                                  [isinstance(p, templates.TextPart) and p.joined for p in parts])
           if outputs_only else range(len(parts)))
  ordered = [parts[i] for i in order]
  ids = []
  for part in ordered:
    if isinstance(part, templates.TextPart):
      ids.append(np.asarray(vocab.text_vocabulary.encode(part.text), np.int32))
    else:
      ids.append(np.asarray(vocab.image_codes(np.asarray(images[part.name])), np.int32))
  tokens = assembly.PartsTokens([isinstance(p, templates.ImagePart) for p in ordered],
                                [p.output for p in ordered],
                                [isinstance(p, templates.TextPart) and p.joined for p in ordered],
                                ids)
  laid_out, _ = assembly.parts_tokens(tokens, layout, outputs_only=False)
  spans, position = [], 0
  for index, part_ids in enumerate(ids):
    if index and not tokens.joined[index]:
      position += 1  # The <break> before it.
    spans.append((position, position + len(part_ids)))
    position += len(part_ids)
  return laid_out, spans, ordered


def _image_prompt(pretrained: Pretrained, parts, images) -> List[int]:
  """The template up to its output image, then the <break> that opens it."""
  _check_vocabulary(pretrained)
  if not isinstance(parts[-1], templates.ImagePart) or not parts[-1].output:
    raise DecodingError('An image task\'s template must end with its output image.')
  tokens, _, _ = _parts_tokens(pretrained, parts[:-1], images)
  return list(pretrained.vocab.sequence_start_ids) + tokens.tolist() + [
      pretrained.vocab.image_open_id]


def _images(pretrained: Pretrained, prompts, config: DecodingConfig):
  return generation.images_after(pretrained, prompts, config)


def _input_ids(image_ids, count: int, what: str) -> np.ndarray:
  image_ids = np.asarray(image_ids)
  if image_ids.ndim != 2 or len(image_ids) != count:
    raise DecodingError(f'{what} must be image ids [P, N] for the {count} prompts; got shape '
                        f'{image_ids.shape}.')
  return image_ids


def edit_images(pretrained: Pretrained, input_ids, instructions: Sequence[str],
                config: DecodingConfig = EDIT_DECODING) -> Tuple[np.ndarray, np.ndarray]:
  """Edited images (uint8 [P, num_decodes, H, W, 3], ids [P, num_decodes, N]) of input images
  (ids [P, N]) following one instruction each."""
  input_ids = _input_ids(input_ids, len(instructions), 'input_ids')
  prompts = [_image_prompt(pretrained, templates.edit(text, f'prompt {i}'), {'input': ids})
             for i, (ids, text) in enumerate(zip(input_ids, instructions))]
  return _images(pretrained, prompts, config)


def controlled_images(pretrained: Pretrained, control_ids, captions: Sequence[str],
                      control: str = 'canny', config: DecodingConfig = CONTROL_DECODING
                      ) -> Tuple[np.ndarray, np.ndarray]:
  """Images following control images (ids [P, N]) of kind `control` and captions."""
  control_ids = _input_ids(control_ids, len(captions), 'control_ids')
  prompts = [_image_prompt(pretrained, templates.control(control, text, f'prompt {i}'),
                           {'control': ids})
             for i, (ids, text) in enumerate(zip(control_ids, captions))]
  return _images(pretrained, prompts, config)


def grounded_images(pretrained: Pretrained, captions: Sequence[str],
                    objects: Sequence[Sequence[Tuple[str, Sequence[float]]]], config: DecodingConfig,
                    resolution: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
  """Images of captions with each (name, box) placed in its box; boxes in pixels of a
  `resolution`-pixel image (default: the image tokenizer's)."""
  if len(objects) != len(captions):
    raise DecodingError(f'{len(captions)} captions but {len(objects)} lists of objects.')
  resolution = resolution or pretrained.image_tokenizer.config.resolution
  prompts = [_image_prompt(pretrained, templates.grounded(text, boxes, resolution, f'prompt {i}'),
                           {})
             for i, (text, boxes) in enumerate(zip(captions, objects))]
  return _images(pretrained, prompts, config)


def rendered_images(pretrained: Pretrained, texts: Sequence[str], config: DecodingConfig
                    ) -> Tuple[np.ndarray, np.ndarray]:
  """Images showing each text (``draw "{text}"``)."""
  prompts = [_image_prompt(pretrained, templates.render_text(text, f'prompt {i}'), {})
             for i, text in enumerate(texts)]
  return _images(pretrained, prompts, config)


def _text_prompt(pretrained: Pretrained, parts, images) -> List[int]:
  """The prompt whose continuation is the template's text output: the tokens before it when
  training put it last, else an infilling prompt with its span masked."""
  _check_vocabulary(pretrained)
  tokens, spans, ordered = _parts_tokens(pretrained, parts, images)
  output = next(i for i, part in enumerate(ordered) if part.output)
  if output == len(ordered) - 1:
    return list(pretrained.vocab.sequence_start_ids) + tokens[:spans[output][0]].tolist()
  cm3_ids = objective.CM3Tokens.from_vocabulary(pretrained.vocab)
  return objective.infilling_prompt(tokens, spans[output], cm3_ids, pretrained.cm3).tolist()


def _text_outputs(pretrained: Pretrained, prompts, config: DecodingConfig,
                  max_new_tokens: int) -> List[List[str]]:
  samples = generate(pretrained.model, pretrained.params, prompts,
                     generation.text_config(pretrained, config, max_new_tokens), pretrained.vocab)
  return generation.texts(pretrained, samples.tokens)


def instructed_captions(pretrained: Pretrained, image_ids, config: DecodingConfig,
                        prompt: str = 'describe', max_new_tokens: int = 32) -> List[List[str]]:
  """Captions [P][num_decodes] of images (ids [P, N]) through a captioning template (a key of
  sft_templates.CAPTION_PROMPTS)."""
  image_ids = np.asarray(image_ids)
  prompts = [_text_prompt(pretrained, templates.caption(_PLACEHOLDER, prompt), {'image': ids})
             for ids in image_ids]
  return [[text.strip() for text in row]
          for row in _text_outputs(pretrained, prompts, config, max_new_tokens)]


def vqa_answers(pretrained: Pretrained, image_ids, questions: Sequence[str],
                config: DecodingConfig, style: int = 0,
                max_new_tokens: int = 16) -> List[List[str]]:
  """Answers [P][num_decodes] to questions about images (ids [P, N]) in one of the paper's three
  VQA wordings; the wording's trailing full stop is removed."""
  image_ids = _input_ids(image_ids, len(questions), 'image_ids')
  prompts = [_text_prompt(pretrained, templates.vqa(q, _PLACEHOLDER, style, f'prompt {i}'),
                          {'image': ids})
             for i, (ids, q) in enumerate(zip(image_ids, questions))]
  return [[text.strip().rstrip('.').strip() for text in row]
          for row in _text_outputs(pretrained, prompts, config, max_new_tokens)]
