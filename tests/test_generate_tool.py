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
