"""Tests of the training metrics sink: metrics.jsonl, TensorBoard files, console, plots, images."""

import json
import math
import os

import numpy as np
from PIL import Image
import pytest

from cm3leon_jax.training import metrics
from cm3leon_jax.training.metrics import (MetricsLogger, image_grid, plot_loss_curve,
                                          read_metrics)


def _event_files(directory):
  return [name for name in os.listdir(directory) if name.startswith('events.out.tfevents')]


def test_write_records_jsonl_and_tensorboard(tmp_path):
  logger = MetricsLogger(str(tmp_path), total_steps=10)
  for step in (1, 2, 3):
    logger.write(step, {'loss': np.float32(4.0 - step), 'lr': 1e-3})
  logger.write(3, {'loss': 2.5}, split='validation')
  logger.close()

  lines = (tmp_path / 'metrics.jsonl').read_text().splitlines()
  records = [json.loads(line) for line in lines]
  assert [(r['split'], r['step']) for r in records] == [
      ('train', 1), ('train', 2), ('train', 3), ('validation', 3)]
  assert records[0]['loss'] == 3.0 and records[0]['lr'] == 1e-3
  assert isinstance(records[0]['time'], float)
  assert _event_files(tmp_path / 'tensorboard' / 'train')
  assert _event_files(tmp_path / 'tensorboard' / 'validation')


def test_non_primary_writes_no_files(tmp_path):
  logger = MetricsLogger(str(tmp_path / 'run'), total_steps=10, is_primary=False)
  logger.write(1, {'loss': 1.0})
  assert logger.write_images(1, 'samples', np.zeros((1, 4, 4, 3), np.uint8)) is None
  logger.close()
  assert not (tmp_path / 'run').exists()


def test_non_finite_values_round_trip(tmp_path):
  logger = MetricsLogger(str(tmp_path), total_steps=10)
  logger.write(1, {'loss': float('nan'), 'grad_norm': float('inf')})
  logger.close()
  [record] = read_metrics(str(tmp_path / 'metrics.jsonl'))
  assert math.isnan(record['loss']) and record['grad_norm'] == math.inf


def test_read_metrics_skips_truncated_last_line_and_keeps_last_repeat(tmp_path):
  path = tmp_path / 'metrics.jsonl'
  rows = [{'step': 2, 'split': 'train', 'loss': 2.0},
          {'step': 1, 'split': 'validation', 'loss': 9.0},
          {'step': 1, 'split': 'train', 'loss': 1.0},
          {'step': 2, 'split': 'train', 'loss': 0.5}]  # A resumed run repeating step 2.
  path.write_text(''.join(json.dumps(r) + '\n' for r in rows) + '{"step": 3, "spl')

  records = read_metrics(str(path))
  assert [(r['split'], r['step'], r['loss']) for r in records] == [
      ('train', 1, 1.0), ('train', 2, 0.5), ('validation', 1, 9.0)]


def test_read_metrics_rejects_corrupt_middle_line(tmp_path):
  path = tmp_path / 'metrics.jsonl'
  path.write_text('{"step": 1, "split": "train"}\nnot json\n{"step": 2, "split": "train"}\n')
  with pytest.raises(ValueError, match='line 2'):
    read_metrics(str(path))


def test_resumed_logger_drops_partial_line_before_appending(tmp_path):
  path = tmp_path / 'metrics.jsonl'
  path.write_text('{"step": 1, "split": "train", "loss": 1.0}\n{"step": 2, "spl')
  logger = MetricsLogger(str(tmp_path), total_steps=10)
  logger.write(2, {'loss': 0.5})
  logger.close()
  assert [(r['step'], r['loss']) for r in read_metrics(str(path))] == [(1, 1.0), (2, 0.5)]


def test_console_progress_line_has_step_loss_and_eta(tmp_path, capsys):
  logger = MetricsLogger(str(tmp_path), total_steps=1000, console_every=2)
  scalars = {'loss': 3.2141, 'learning_rate': 1.2e-3, 'grad_norm': 0.812, 'tokens_per_s': 9812.0,
             'step_time': 0.2012}
  for step in (118, 119, 120):
    logger.write(step, scalars)
  logger.write(120, {'loss': 2.9, 'accuracy': 0.25}, split='eval')
  logger.close()

  lines = capsys.readouterr().out.splitlines()
  # console_every=2 prints even steps only; the first (118) has no timing yet, so no ETA.
  assert lines[0] == ('step 118/1000 (11.8%) loss 3.214 lr 1.2e-03 grad_norm 0.81 '
                      'tokens/s 9,812 step_time 0.201s')
  assert lines[1].startswith('step 120/1000 (12.0%) loss 3.214 lr 1.2e-03')
  assert ' ETA ' in lines[1]
  assert lines[2] == 'eval step 120: loss 2.9 accuracy 0.25'
  assert len(lines) == 3


def test_eta_uses_mean_step_time_since_first_write(tmp_path, monkeypatch):
  clock = iter([100.0, 110.0])  # First write at t=100, ETA asked at t=110.
  monkeypatch.setattr(metrics.time, 'monotonic', lambda: next(clock))
  logger = MetricsLogger(str(tmp_path), total_steps=100, is_primary=False)
  logger.write(10, {'loss': 1.0})
  assert logger.eta_seconds(20) == pytest.approx(80.0)  # 1 s/step, 80 steps to go.


@pytest.mark.parametrize('seconds, text', [(45, '45s'), (177, '2m57s'), (3 * 3600 + 301, '3h05m'),
                                           (2 * 86400 + 4 * 3600, '2d04h')])
def test_format_duration(seconds, text):
  assert metrics.format_duration(seconds) == text


def _colors(path):
  with Image.open(path) as image:
    assert image.size == (800, 500)
    return {tuple(c) for c in np.asarray(image.convert('RGB')).reshape(-1, 3)}


def test_plot_loss_curve_draws_train_validation_and_baseline(tmp_path):
  records = [{'split': 'train', 'step': s, 'loss': 5.0 / s} for s in range(1, 50)]
  records[3]['loss'] = float('nan')
  records += [{'split': 'validation', 'step': s, 'loss': 6.0 / s} for s in (10, 20, 40)]
  path = plot_loss_curve(records, str(tmp_path / 'plots' / 'loss.png'), baseline=4.5,
                         title='loss', baseline_label='unigram')
  assert path == str(tmp_path / 'plots' / 'loss.png')
  colors = _colors(path)
  assert len(colors) > 2
  assert metrics.SERIES_COLORS[0] in colors  # Train line.
  assert metrics.SERIES_COLORS[1] in colors  # Validation line.
  assert metrics.BASELINE_COLOR in colors


def _pixels_of(path, color) -> int:
  with Image.open(path) as image:
    return int((np.asarray(image.convert('RGB')) == color).all(axis=-1).sum())


@pytest.mark.parametrize('records, has_point', [
    ([{'split': 'train', 'step': 7, 'loss': 2.0}], True),
    ([{'split': 'train', 'step': 1, 'loss': float('nan')}], False),
    ([], False),
])
def test_plot_loss_curve_handles_degenerate_inputs(tmp_path, records, has_point):
  path = plot_loss_curve(records, str(tmp_path / 'loss.png'))
  assert len(_colors(path)) > 1
  # The train colour is in the legend either way; a finite point adds its marker.
  legend_only = plot_loss_curve([], str(tmp_path / 'empty.png'))
  color = metrics.SERIES_COLORS[0]
  assert _pixels_of(legend_only, color) > 0
  added = _pixels_of(path, color) - _pixels_of(legend_only, color)
  assert added >= 0 and (added >= 20) == has_point, added


def test_image_grid_tiles_with_border():
  images = np.arange(5, dtype=np.uint8)[:, None, None, None] * np.ones((5, 4, 6, 3), np.uint8)
  grid = image_grid(images, columns=3)
  assert grid.shape == (2 * (4 + 2) + 2, 3 * (6 + 2) + 2, 3)
  np.testing.assert_array_equal(grid[2:6, 2:8], images[0])
  np.testing.assert_array_equal(grid[8:12, 10:16], images[4])  # Row 1, column 1.
  assert (grid[:2] == 255).all() and (grid[:, 8:10] == 255).all()
  assert (grid[8:12, 18:24] == 255).all()  # The sixth cell is empty.


def test_write_images_writes_png_of_the_grid(tmp_path):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
  logger = MetricsLogger(str(tmp_path), total_steps=10)
  path = logger.write_images(7, 'samples', images, columns=3)
  logger.close()
  assert path == str(tmp_path / 'images' / 'samples_000007.png')
  with Image.open(path) as png:
    np.testing.assert_array_equal(np.asarray(png), image_grid(images, 3))
