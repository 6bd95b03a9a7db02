"""The SFT templates render exactly as CM3Leon's paper writes them (arXiv 2309.02591, Table 5)."""

import pytest

from cm3leon_jax.data import sft_templates as templates


def test_each_template_renders_as_the_paper_writes_it():
  golden = {
      templates.edit('make the circle blue'):
          'Edit first image following the instruction <break> {input} <break> make the circle '
          'blue <break> {output}',
      templates.control('canny', 'a red circle'):
          'Make high quality image from canny edge features <break> {control} <break> a red '
          'circle <break> {output}',
      templates.control('segmentation', 'a red circle'):
          'Make high quality image from a segmentation map <break> {control} <break> a red '
          'circle <break> {output}',
      templates.control('scribble', 'a cat'):
          "Make high quality image from children's scribbles <break> {control} <break> a cat "
          '<break> {output}',
      templates.grounded('two shapes', [('circle', (0, 0, 16, 8)), ('square', (16, 16, 32, 32))],
                         resolution=32):
          'Generate high quality image of two shapes with segmentations circle at (0, 0, 128, 64), '
          'square at (128, 128, 255, 255) <break> {output}',
      templates.render_text('STOP'): 'draw "STOP" <break> {output}',
      templates.caption('a red circle'): 'a red circle <break> {image}',
      templates.caption('a red circle', 'describe'):
          'Describe the given picture. a red circle <break> {image}',
      templates.caption('a red circle', 'long'):
          'Generate a long caption for the given image. a red circle <break> {image}',
      templates.vqa('what colour is the circle?', 'red', 0):
          'Question: what colour is the circle? Answer: red. <break> {image}',
      templates.vqa('what colour is the circle?', 'red', 1):
          'Question: what colour is the circle?\nred <break> {image}',
      templates.vqa('what colour is the circle?', 'red', 2):
          'Question: what colour is the circle? The answer is red. <break> {image}',
  }
  for parts, expected in golden.items():
    assert templates.render(parts) == expected


def test_outputs_are_marked_and_moved_after_their_prompt_on_request():
  edit = templates.edit('make it blue')
  assert [p.output for p in edit] == [False, False, False, True]
  assert templates.outputs_last(edit) == edit
  vqa = templates.vqa('what shape?', 'circle', 2)
  assert templates.render(templates.outputs_last(vqa)) == (
      '{image} <break> Question: what shape? The answer is circle.')
  assert templates.render(templates.outputs_last(templates.caption('a cat'))) == (
      '{image} <break> a cat')


def test_missing_fields_and_bad_boxes_name_the_record():
  with pytest.raises(templates.TemplateError, match=r"pair-7.*'instruction'"):
    templates.edit('  ', record_id='pair-7')
  with pytest.raises(templates.TemplateError, match=r'rec-1.*\(0, 0, 40, 8\).*32x32'):
    templates.grounded('a cat', [('cat', (0, 0, 40, 8))], 32, record_id='rec-1')
  with pytest.raises(templates.TemplateError, match=r'rec-2.*unknown control'):
    templates.control('sketch', 'a cat', record_id='rec-2')
  with pytest.raises(templates.TemplateError, match=r"rec-3.*'answer'"):
    templates.vqa('what?', None, record_id='rec-3')


def test_images_of_one_record_must_be_present_and_of_one_size():
  parts = templates.edit('make it blue', record_id='pair-3')
  templates.check_images(parts, {'input': (32, 32), 'output': (32, 32)}, 'pair-3')
  with pytest.raises(templates.TemplateError, match=r'pair-3.*differ in size'):
    templates.check_images(parts, {'input': (32, 32), 'output': (64, 64)}, 'pair-3')
  with pytest.raises(templates.TemplateError, match=r"pair-3.*\['output'\]"):
    templates.check_images(parts, {'input': (32, 32)}, 'pair-3')
