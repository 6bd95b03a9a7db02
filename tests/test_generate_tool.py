"""tools/generate.py's grid: samples enlarged by nearest-neighbour upscaling (--scale)."""

import json
import os
import textwrap

import numpy as np
import pytest
from PIL import Image

from helpers import run_tool
from cm3leon_jax.cli import generate

BORDER = 2  # image_grid's white border around and between cells.


def _samples(prompts=2, per_prompt=3, side=32):
  return np.random.RandomState(0).randint(0, 256, (prompts, per_prompt, side, side, 3), np.uint8)


def _cells(grid, factor, side, prompts, per_prompt):
  """The grid's cells [P, S, side*factor, side*factor, 3], read back past the borders."""
  cell = side * factor
  return np.stack([np.stack([grid[BORDER + r * (cell + BORDER):][:cell,
                                  BORDER + c * (cell + BORDER):][:, :cell]
                             for c in range(per_prompt)]) for r in range(prompts)])


@pytest.mark.parametrize('side, scale, factor', [(32, None, 4), (48, None, 3), (128, None, 1),
                                                 (200, None, 1), (32, 1, 1), (32, 2, 2)])
def test_grid_cells_are_the_samples_repeated_scale_times(side, scale, factor):
  images = _samples(side=side)
  grid, used = generate.sample_grid(images, scale)
  assert used == factor
  cell = side * factor
  assert scale is not None or cell >= generate.MIN_CELL_PIXELS
  # One row per prompt, one column per sample: cells * scaled size, plus the borders.
  assert grid.shape == (2 * (cell + BORDER) + BORDER, 3 * (cell + BORDER) + BORDER, 3)
  expected = np.repeat(np.repeat(images, factor, axis=2), factor, axis=3)
  np.testing.assert_array_equal(_cells(grid, factor, side, 2, 3), expected)


def test_scale_below_one_is_refused():
  with pytest.raises(ValueError, match='at least 1'):
    generate.upscale_factor(32, 32, 0)


# The tool end to end with its sampling faked: flags -> PNG and settings.
_FAKE_RUN = textwrap.dedent('''
    import sys
    import numpy as np
    from cm3leon_jax.cli import generate

    class FakePretrained:
      image_tokenizer_path = None

    images = np.load(sys.argv.pop(1))
    generate.Pretrained.load = staticmethod(lambda *args, **kwargs: FakePretrained())
    generate.generation.text_to_image = lambda *args: (images, None)
    generate.run()
    ''')


def test_the_tool_writes_the_scaled_grid_and_records_the_scale(tmp_path):
  # The default scale runs for real in the quickstart's end-to-end test (tests/test_train.py).
  images = _samples()
  np.save(tmp_path / 'samples.npy', images)
  factor = 2
  run_tool(['-c', _FAKE_RUN, str(tmp_path / 'samples.npy'), '--checkpoint=unused',
            '--prompt=a red circle', '--prompt=a blue square', f'--output={tmp_path / "grid.png"}',
            f'--scale={factor}'], env=dict(os.environ, JAX_PLATFORMS='cpu'))
  with Image.open(tmp_path / 'grid.png') as png:
    grid = np.asarray(png)
  np.testing.assert_array_equal(
      _cells(grid, factor, 32, 2, 3), np.repeat(np.repeat(images, factor, 2), factor, 3))
  assert grid.shape[:2] == (2 * (32 * factor + BORDER) + BORDER,
                            3 * (32 * factor + BORDER) + BORDER)
  assert json.loads((tmp_path / 'grid.json').read_text())['scale'] == factor


@pytest.fixture(scope='module')
def random_model(tmp_path_factory, shared_tokenizers):
  """An exported tiny random model with the shared tokenizers."""
  from helpers import model_and_params, tiny_config  # pylint: disable=g-import-not-at-top
  from cm3leon_jax.data import objective  # pylint: disable=g-import-not-at-top
  from cm3leon_jax.data.store import text_vocabulary  # pylint: disable=g-import-not-at-top
  from cm3leon_jax.decoding.export import export_model  # pylint: disable=g-import-not-at-top
  from cm3leon_jax.decoding.pretrained import Pretrained  # pylint: disable=g-import-not-at-top
  from cm3leon_jax.tokenizers.multimodal import MultimodalVocabulary  # pylint: disable=g-import-not-at-top
  text, image_tokenizer = shared_tokenizers
  vocab = MultimodalVocabulary(text_vocabulary(text), num_image_codes=64, num_sentinels=8)
  model, params = model_and_params(tiny_config(vocab_size=vocab.vocab_size, max_length=96))
  folder = tmp_path_factory.mktemp('random_model')
  export_model(Pretrained(model, params, vocab, objective.CM3Config(), image_tokenizer,
                          str(folder)), str(folder / 'model'))
  return folder / 'model'


def test_the_tool_edits_an_image_and_answers_questions_about_it(random_model, tmp_path):
  scene = tmp_path / 'scene.png'
  Image.fromarray(_samples(1, 1)[0, 0]).save(scene)
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  run_tool(['tools/generate.py', f'--checkpoint={random_model}', '--task=edit', f'--image={scene}',
            '--instruction=turn the circle blue', '--instruction=remove the square',
            '--num_samples=2', f'--output={tmp_path / "edits.png"}'], env=env)
  settings = json.loads((tmp_path / 'edits.json').read_text())
  assert settings['task'] == 'edit'
  assert settings['prompts'] == ['turn the circle blue', 'remove the square']
  assert (settings['decoding']['guidance_scale'], settings['decoding']['image_guidance_scale']) == (
      7.5, 1.5)
  with Image.open(tmp_path / 'edits.png') as grid:  # 2 x 2 cells of 32 px shown at 128.
    assert grid.size == (2 * (128 + BORDER) + BORDER,) * 2
  run_tool(['tools/generate.py', f'--checkpoint={random_model}', '--task=vqa', f'--image={scene}',
            '--question=how many shapes are there?', '--num_samples=2', '--temperature=0',
            '--max_text_tokens=4', f'--output={tmp_path / "answers.json"}'], env=env)
  result = json.loads((tmp_path / 'answers.json').read_text())
  assert result['questions'] == ['how many shapes are there?']
  assert len(result['answers']) == 1 and len(result['answers'][0]) == 2
  assert result['decoding']['guidance_scale'] is None


def test_boxes_flag_parses_names_and_pixels():
  from cm3leon_jax.cli import instruction_tasks  # pylint: disable=g-import-not-at-top
  assert instruction_tasks.parse_boxes('red circle:4,4,20,20; blue square:22,2,30,10') == [
      ('red circle', (4.0, 4.0, 20.0, 20.0)), ('blue square', (22.0, 2.0, 30.0, 10.0))]
  with pytest.raises(Exception, match='not "name:x0,y0,x1,y1"'):
    instruction_tasks.parse_boxes('circle:1,2,3')
  with pytest.raises(Exception, match='numbers must be'):
    instruction_tasks.parse_boxes('circle:a,b,c,d')
