r"""The instruction tasks of tools/generate.py (--task), for a model fine-tuned on them.

  --task=edit     --image=in.png --instruction="make the circle blue"     (repeatable instruction)
  --task=control  --control_image=edges.png --prompt="a red circle" [--control=canny]
                  (without --control_image, canny edges of --image by OpenCV)
  --task=ground   --prompt="two shapes" --boxes="red circle:4,4,20,20;blue square:22,2,30,10"
                  (boxes in pixels of the model's image resolution)
  --task=render   --prompt="stop"
  --task=caption  --image=photo.png [--caption_prompt=describe]
  --task=vqa      --image=photo.png --question="what colour is the circle?" [--vqa_style=0]

Image tasks write the grid (one row per prompt); text tasks print and write JSON.
"""

from typing import Dict, List, Sequence, Tuple

from absl import app, flags
import numpy as np

from cm3leon_jax.data import images as image_lib
from cm3leon_jax.data import sft_sources
from cm3leon_jax.data import sft_templates
from cm3leon_jax.decoding import DecodingConfig, instructions
from cm3leon_jax.decoding.pretrained import Pretrained

FLAGS = flags.FLAGS
IMAGE_TASKS = ('edit', 'control', 'ground', 'render')
TEXT_TASKS = ('caption', 'vqa')
# Guidance each task uses unless --guidance_scale is given: the paper's for editing and control.
DEFAULT_GUIDANCE = {'text_to_image': (3.0, None), 'edit': (7.5, 1.5), 'control': (3.0, None),
                    'ground': (3.0, None), 'render': (3.0, None)}


def define_flags():
  """The flags of the instruction tasks."""
  flags.DEFINE_enum('task', 'text_to_image', ['text_to_image', *IMAGE_TASKS, *TEXT_TASKS],
                    'What to generate (see cm3leon_jax/cli/instruction_tasks.py).')
  flags.DEFINE_string('image', None, 'The input image (edit, caption, vqa; control: its canny '
                      'edges when there is no --control_image).')
  flags.DEFINE_string('control_image', None, 'The control image (--task=control).')
  flags.DEFINE_enum('control', 'canny', sorted(sft_templates.CONTROL_PHRASES),
                    'What the control image shows.')
  flags.DEFINE_multi_string('instruction', [], 'An edit instruction (repeat for several).')
  flags.DEFINE_multi_string('question', [], 'A question about --image (repeat for several).')
  flags.DEFINE_multi_string('boxes', [], 'Objects of one --prompt, "name:x0,y0,x1,y1;..." in '
                            'pixels (one flag per prompt, in order).')
  flags.DEFINE_float('image_guidance_scale', None, 'Image scale of three-stream guidance '
                     '(default: 1.5 for --task=edit, else off).')
  flags.DEFINE_enum('caption_prompt', 'describe', sorted(sft_templates.CAPTION_PROMPTS),
                    'The captioning template.')
  flags.DEFINE_integer('vqa_style', 0, 'The VQA wording: 0, 1 or 2.', lower_bound=0,
                       upper_bound=sft_templates.VQA_STYLES - 1)
  flags.DEFINE_integer('max_text_tokens', 32, 'Longest caption or answer.')


def guidance(task: str, scale, image_scale, enabled: bool) -> Tuple:
  """(guidance_scale, image_guidance_scale) for the task: the flags, else its defaults."""
  if not enabled:
    return None, None
  default_scale, default_image = DEFAULT_GUIDANCE.get(task, (None, None))
  return (default_scale if scale is None else scale,
          default_image if image_scale is None else image_scale)


def parse_boxes(text: str) -> List[Tuple[str, Tuple[float, ...]]]:
  """'red circle:4,4,20,20;blue square:22,2,30,10' -> [('red circle', (4, 4, 20, 20)), ...]."""
  objects = []
  for item in filter(None, (piece.strip() for piece in text.split(';'))):
    name, _, numbers = item.rpartition(':')
    try:
      box = tuple(float(v) for v in numbers.split(','))
    except ValueError as e:
      raise app.UsageError(f'--boxes item {item!r}: numbers must be x0,y0,x1,y1 ({e}).') from e
    if not name.strip() or len(box) != 4:
      raise app.UsageError(f'--boxes item {item!r} is not "name:x0,y0,x1,y1".')
    objects.append((name.strip(), box))
  return objects


def _image_ids(pretrained: Pretrained, path: str, flag: str, edges: bool = False) -> np.ndarray:
  """Token ids [N] of an image file, at the tokenizer's resolution (its canny edges if asked)."""
  if not path:
    raise app.UsageError(f'--task={FLAGS.task} needs --{flag}.')
  resolution = pretrained.image_tokenizer.config.resolution
  try:
    pixels = image_lib.preprocess(image_lib.load_image(path), resolution)
  except image_lib.ImageError as e:
    raise app.UsageError(f'--{flag}: {e}') from e
  if edges:
    canny = sft_sources.canny_edges(image_lib.postprocess(pixels))
    pixels = canny.astype(np.float32) / 127.5 - 1.0
  return pretrained.encode_images(pixels[None])[0]


def _texts(values: Sequence[str], flag: str) -> List[str]:
  if not values:
    raise app.UsageError(f'--task={FLAGS.task} needs at least one --{flag}.')
  return list(values)


def image_task(pretrained: Pretrained, config: DecodingConfig,
               prompts: Sequence[str]) -> Tuple[np.ndarray, List[str]]:
  """(uint8 images [P, S, H, W, 3], the row labels) of an image task."""
  task = FLAGS.task
  if task == 'edit':
    texts = _texts(FLAGS.instruction, 'instruction')
    ids = _image_ids(pretrained, FLAGS.image, 'image')
    images, _ = instructions.edit_images(pretrained, np.stack([ids] * len(texts)), texts, config)
    return images, texts
  texts = _texts(prompts, 'prompt')
  if task == 'control':
    ids = (_image_ids(pretrained, FLAGS.control_image, 'control_image') if FLAGS.control_image
           else _image_ids(pretrained, FLAGS.image, 'image', edges=FLAGS.control == 'canny'))
    images, _ = instructions.controlled_images(pretrained, np.stack([ids] * len(texts)), texts,
                                               FLAGS.control, config)
  elif task == 'ground':
    if len(FLAGS.boxes) != len(texts):
      raise app.UsageError(f'--task=ground needs one --boxes per --prompt; got {len(FLAGS.boxes)} '
                           f'for {len(texts)}.')
    images, _ = instructions.grounded_images(pretrained, texts,
                                             [parse_boxes(b) for b in FLAGS.boxes], config)
  else:
    images, _ = instructions.rendered_images(pretrained, texts, config)
  return images, texts


def text_task(pretrained: Pretrained, config: DecodingConfig) -> Dict[str, object]:
  """The captions or answers of a text task, as the JSON the tool writes."""
  ids = _image_ids(pretrained, FLAGS.image, 'image')
  if FLAGS.task == 'caption':
    (captions,) = instructions.instructed_captions(pretrained, ids[None], config,
                                                   FLAGS.caption_prompt, FLAGS.max_text_tokens)
    return {'image': FLAGS.image, 'captions': captions}
  questions = _texts(FLAGS.question, 'question')
  answers = instructions.vqa_answers(pretrained, np.stack([ids] * len(questions)), questions,
                                     config, FLAGS.vqa_style, FLAGS.max_text_tokens)
  return {'image': FLAGS.image, 'questions': questions, 'answers': answers}
