"""Training metrics: TensorBoard summaries, a JSON-lines record, console progress and loss plots.

`MetricsLogger` is the one sink a training loop writes to. Every `write` goes to

* TensorBoard (through clu's metric writers), one run per split under `<model_dir>/tensorboard/`;
* `<model_dir>/metrics.jsonl`, one JSON object per line, flushed as written so a killed run keeps
  every record it finished (read it back with `read_metrics`);
* the console (stdout): a one-line progress message with an ETA.

Only the primary process (`is_primary`, e.g. `jax.process_index() == 0`) writes files; the others
only print, so a multi-host run does not race on the shared model directory.

`plot_loss_curve` draws a loss curve PNG from the records with Pillow alone (no matplotlib).
"""

import json
import math
import os
import time
from typing import Dict, List, Optional, Sequence, Tuple

from absl import logging
from clu import metric_writers
import numpy as np
from PIL import Image, ImageDraw, ImageFont

METRICS_FILENAME = 'metrics.jsonl'
VALIDATION_SPLITS = ('eval', 'validation')

# Keys shown in the train progress line, in order: (scalar key, label, value format).
CONSOLE_FIELDS = (
    ('loss', 'loss', '{:.3f}'),
    ('learning_rate', 'lr', '{:.1e}'),
    ('grad_norm', 'grad_norm', '{:.2f}'),
    ('tokens_per_s', 'tokens/s', '{:,.0f}'),
    ('mfu', 'MFU', '{:.1%}'),
    ('step_time', 'step_time', '{:.3f}s'),
)

# Plot colours, one per drawn series in order (per key: train, then validation). No
# antialiasing is used, so these exact RGB values appear in the PNG.
SERIES_COLORS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
                 (140, 86, 75))
BASELINE_COLOR = (127, 127, 127)
PLOT_SIZE = (800, 500)


def format_duration(seconds: float) -> str:
  """Compact duration: '45s', '2m57s', '3h05m', '2d04h'."""
  seconds = round(max(seconds, 0.0))
  days, rest = divmod(seconds, 86400)
  hours, rest = divmod(rest, 3600)
  minutes, secs = divmod(rest, 60)
  if days:
    return f'{days}d{hours:02d}h'
  if hours:
    return f'{hours}h{minutes:02d}m'
  if minutes:
    return f'{minutes}m{secs:02d}s'
  return f'{secs}s'


def image_grid(images: np.ndarray, columns: int) -> np.ndarray:
  """Tiles uint8 images [N, H, W, 3] into one [rows*(H+2)+2, cols*(W+2)+2, 3] image.

  Images fill the grid row by row, separated and surrounded by a 2-pixel white border; cells
  after the last image stay white. `columns` is clamped to N so a short batch has no empty column.
  """
  images = np.asarray(images)
  if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
    raise ValueError(f'expected uint8 images [N, H, W, 3], got {images.dtype} {images.shape}')
  num, height, width, _ = images.shape
  columns = max(1, min(columns, num))
  rows = math.ceil(num / columns)
  border = 2
  grid = np.full((rows * (height + border) + border, columns * (width + border) + border, 3),
                 255, np.uint8)
  for index, image in enumerate(images):
    row, col = divmod(index, columns)
    top = border + row * (height + border)
    left = border + col * (width + border)
    grid[top:top + height, left:left + width] = image
  return grid


def _repair_truncated_tail(path: str) -> None:
  """Cuts a partial last line (left by a killed run) so appended records start on a fresh line."""
  if not os.path.exists(path):
    return
  with open(path, 'rb+') as f:
    data = f.read()
    if data and not data.endswith(b'\n'):
      f.truncate(data.rfind(b'\n') + 1)


class MetricsLogger:
  """Writes training and evaluation scalars to TensorBoard, metrics.jsonl and the console.

  metrics.jsonl holds one `{"step", "split", "time", **scalars}` object per line, values cast to
  float. Non-finite values are written with json's default `allow_nan=True`, i.e. as the bare
  tokens `NaN`, `Infinity` and `-Infinity`: not strict JSON, but Python's `json` (and so
  `read_metrics`) reads them back as floats, and a diverging loss stays visible in the record.
  """

  def __init__(self, model_dir: str, total_steps: int, is_primary: bool = True,
               console_every: int = 1):
    """Creates the logger.

    Args:
      model_dir: run directory; files go to metrics.jsonl, tensorboard/<split>/ and images/.
      total_steps: the step training ends at, for the progress percentage and the ETA.
      is_primary: whether this process writes files (TensorBoard, metrics.jsonl, PNGs); the
        others only print their progress lines.
      console_every: print a train progress line every this many steps (and at total_steps).
    """
    self.model_dir = model_dir
    self.total_steps = total_steps
    self.is_primary = is_primary
    self.console_every = max(1, console_every)
    self._writers: Dict[str, metric_writers.MetricWriter] = {}
    # The ETA clock starts at the first train write, so step 1's compilation is not counted.
    self._first_step: Optional[int] = None
    self._first_time: Optional[float] = None
    self._jsonl = None
    if is_primary:
      os.makedirs(model_dir, exist_ok=True)
      path = os.path.join(model_dir, METRICS_FILENAME)
      _repair_truncated_tail(path)
      self._jsonl = open(path, 'a', encoding='utf-8')

  def _writer(self, split: str) -> metric_writers.MetricWriter:
    """The TensorBoard writer of `split`, created on first use (primary process only)."""
    if split not in self._writers:
      # A bare SummaryWriter rather than create_default_writer: its LoggingWriter would log every
      # write again, duplicating (and ignoring console_every for) the progress lines below.
      logdir = os.path.join(self.model_dir, 'tensorboard', split)
      self._writers[split] = metric_writers.AsyncMultiWriter(
          [metric_writers.SummaryWriter(logdir)])
    return self._writers[split]

  def write(self, step: int, scalars: Dict[str, float], split: str = 'train') -> None:
    """Records `scalars` at `step` for `split` ('train', 'validation', 'eval', ...)."""
    step = int(step)
    scalars = {key: float(value) for key, value in scalars.items()}
    if split == 'train' and self._first_time is None:
      self._first_step, self._first_time = step, time.monotonic()
    if self.is_primary:
      self._writer(split).write_scalars(step, scalars)
      record = {'step': step, 'split': split, 'time': time.time(), **scalars}
      self._jsonl.write(json.dumps(record) + '\n')
      self._jsonl.flush()
    if split != 'train':
      self._print(f'{split} step {step}: ' +
                  ' '.join(f'{key} {value:.4g}' for key, value in scalars.items()))
    elif step % self.console_every == 0 or step == self.total_steps:
      self._print(self._progress_line(step, scalars))

  def eta_seconds(self, step: int) -> Optional[float]:
    """Seconds left to total_steps at the mean wall time per step since the first train write."""
    if self._first_time is None or step <= self._first_step:
      return None
    per_step = (time.monotonic() - self._first_time) / (step - self._first_step)
    return per_step * max(self.total_steps - step, 0)

  def _progress_line(self, step: int, scalars: Dict[str, float]) -> str:
    """'step 120/1000 (12.0%) loss 3.214 lr 1.2e-03 ... ETA 2m57s' (ETA from the 2nd write on)."""
    percent = 100.0 * step / self.total_steps if self.total_steps else 0.0
    parts = [f'step {step}/{self.total_steps} ({percent:.1f}%)']
    parts += [f'{label} {fmt.format(scalars[key])}' for key, label, fmt in CONSOLE_FIELDS
              if key in scalars]
    eta = self.eta_seconds(step)
    if eta is not None:
      parts.append(f'ETA {format_duration(eta)}')
    return ' '.join(parts)

  @staticmethod
  def _print(line: str) -> None:
    # stdout only: under absl's app.run, logging.info would print the same line again on stderr.
    print(line, flush=True)

  def write_images(self, step: int, name: str, images: np.ndarray,
                   columns: Optional[int] = None) -> Optional[str]:
    """Writes uint8 images [N, H, W, 3] as one grid to TensorBoard and to a PNG file.

    The grid (see `image_grid`; `columns` defaults to ceil(sqrt(N))) goes to the 'train'
    TensorBoard run under `name` and to `<model_dir>/images/<name>_<step:06d>.png`.
    Returns the PNG path, or None on a non-primary process (which writes nothing).
    """
    if not self.is_primary:
      return None
    columns = columns or math.ceil(math.sqrt(len(images)))
    grid = image_grid(images, columns)
    self._writer('train').write_images(int(step), {name: grid[None]})
    image_dir = os.path.join(self.model_dir, 'images')
    os.makedirs(image_dir, exist_ok=True)
    path = os.path.join(image_dir, f'{name}_{int(step):06d}.png')
    Image.fromarray(grid).save(path)
    return path

  def flush(self) -> None:
    """Pushes pending TensorBoard summaries and JSON lines to disk."""
    for writer in self._writers.values():
      writer.flush()
    if self._jsonl is not None:
      self._jsonl.flush()

  def close(self) -> None:
    """Flushes and closes every file; the logger must not be written to afterwards."""
    for writer in self._writers.values():
      writer.close()
    self._writers.clear()
    if self._jsonl is not None:
      self._jsonl.close()
      self._jsonl = None


def read_metrics(path: str) -> List[dict]:
  """Reads metrics.jsonl: the last record of each (split, step), sorted by split then step.

  A resumed run rewrites the steps it repeats, so later records win. A truncated last line (a
  run killed mid-write) is skipped; an unreadable line elsewhere raises ValueError.
  """
  with open(path, encoding='utf-8') as f:
    lines = [line for line in f.read().split('\n') if line.strip()]
  latest = {}
  for index, line in enumerate(lines):
    try:
      record = json.loads(line)
    except json.JSONDecodeError as e:
      if index == len(lines) - 1:
        logging.warning('%s: skipping truncated last line %r', path, line)
        continue
      raise ValueError(f'{path}: line {index + 1} is not JSON: {line!r}') from e
    latest[(record['split'], record['step'])] = record
  return [latest[key] for key in sorted(latest)]


def _finite_points(records: Sequence[dict], splits: Sequence[str],
                   key: str) -> List[Tuple[float, float]]:
  """(step, value) of `key` in records of `splits`, in step order, non-finite values dropped."""
  points = []
  for record in records:
    value = record.get(key)
    if (record.get('split') in splits and isinstance(value, (int, float)) and
        math.isfinite(value)):
      points.append((float(record['step']), float(value)))
  return sorted(points)


def _nice_ticks(low: float, high: float, count: int = 5) -> List[float]:
  """Round ticks within [low, high], as near `count` of them as 1-2-2.5-5 spacing allows."""
  magnitude = 10 ** math.floor(math.log10((high - low) / count))
  candidates = [m * magnitude for m in (1, 2, 2.5, 5, 10, 20)]

  def ticks(spacing: float) -> List[float]:
    first = math.ceil(low / spacing - 1e-9) * spacing
    return [first + i * spacing for i in range(int((high - first) / spacing + 1e-9) + 1)]

  return min((ticks(spacing) for spacing in candidates), key=lambda t: abs(len(t) - count))


def _padded_range(values: Sequence[float], pad_fraction: float) -> Tuple[float, float]:
  """(low, high) enclosing `values` with a margin; a degenerate range is widened around it."""
  if not values:
    return 0.0, 1.0
  low, high = min(values), max(values)
  if high == low:
    half = abs(low) * 0.1 or 1.0
    return low - half, high + half
  pad = (high - low) * pad_fraction
  return low - pad, high + pad


def _dashed_hline(draw: ImageDraw.ImageDraw, x0: int, x1: int, y: int, color) -> None:
  """Horizontal dashed line from x0 to x1 (8-pixel dashes, 6-pixel gaps)."""
  for start in range(x0, x1, 14):
    draw.line([(start, y), (min(start + 8, x1), y)], fill=color, width=2)


def plot_loss_curve(records: Sequence[dict], path: str, keys: Sequence[str] = ('loss',),
                    baseline: Optional[float] = None, title: str = '',
                    baseline_label: str = 'baseline') -> str:
  """Draws train (line) and validation (line with markers) curves of `keys` to an 800x500 PNG.

  Args:
    records: metrics records, e.g. from `read_metrics`; validation is the 'eval' and
      'validation' splits. NaN and infinite values are skipped.
    path: PNG file to write.
    keys: scalar keys to plot; each gives a train and (if any records) a validation series.
    baseline: optional reference loss drawn as a dashed horizontal line, e.g. the loss of
      predicting from unigram token frequencies.
    title: text above the chart.
    baseline_label: the baseline's name in its label and the legend.
  Returns:
    `path`.
  """
  series = []  # (label, points, with_markers)
  for key in keys:
    series.append((f'train {key}', _finite_points(records, ('train',), key), False))
    validation = _finite_points(records, VALIDATION_SPLITS, key)
    if validation:
      series.append((f'validation {key}', validation, True))
  steps = [x for _, points, _ in series for x, _ in points]
  values = [y for _, points, _ in series for _, y in points]
  if baseline is not None and math.isfinite(baseline):
    values.append(baseline)
  else:
    baseline = None
  x_low, x_high = _padded_range(steps, 0.0)
  y_low, y_high = _padded_range(values, 0.05)

  width, height = PLOT_SIZE
  left, right, top, bottom = 75, width - 25, 45, height - 50
  image = Image.new('RGB', PLOT_SIZE, 'white')
  draw = ImageDraw.Draw(image)
  font = ImageFont.load_default()

  def to_pixel(x: float, y: float) -> Tuple[float, float]:
    return (left + (x - x_low) / (x_high - x_low) * (right - left),
            bottom - (y - y_low) / (y_high - y_low) * (bottom - top))

  # Grid lines and tick labels first, so the curves are drawn over them.
  for x in _nice_ticks(x_low, x_high):
    px, _ = to_pixel(x, y_low)
    draw.line([(px, top), (px, bottom)], fill=(230, 230, 230))
    draw.text((px, bottom + 6), f'{x:g}', fill='black', font=font, anchor='mt')
  for y in _nice_ticks(y_low, y_high):
    _, py = to_pixel(x_low, y)
    draw.line([(left, py), (right, py)], fill=(230, 230, 230))
    draw.text((left - 6, py), f'{y:.4g}', fill='black', font=font, anchor='rm')
  draw.rectangle([left, top, right, bottom], outline='black')
  draw.text(((left + right) / 2, height - 8), 'step', fill='black', font=font, anchor='md')
  draw.text((8, top - 8), ', '.join(keys), fill='black', font=font, anchor='ls')
  draw.text((width / 2, 12), title, fill='black', font=font, anchor='mt')

  legend = []  # (label, colour, dashed)
  if baseline is not None:
    _, py = to_pixel(x_low, baseline)
    _dashed_hline(draw, left, right, round(py), BASELINE_COLOR)
    # Right-aligned above the line on a white patch, so curves crossing it do not hide it.
    label_xy = (right - 6, py - 4)
    label = f'{baseline_label} {baseline:.4g}'
    draw.rectangle(draw.textbbox(label_xy, label, font=font, anchor='rs'), fill='white')
    draw.text(label_xy, label, fill=BASELINE_COLOR, font=font, anchor='rs')
    legend.append((baseline_label, BASELINE_COLOR, True))
  for index, (label, points, with_markers) in enumerate(series):
    color = SERIES_COLORS[index % len(SERIES_COLORS)]
    pixels = [to_pixel(x, y) for x, y in points]
    if len(pixels) > 1:
      draw.line(pixels, fill=color, width=2, joint='curve')
    # A single point has no line to show, so it always gets a marker.
    if with_markers or len(pixels) == 1:
      for px, py in pixels:
        draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=color)
    legend.append((label, color, False))
  if not steps:
    draw.text(((left + right) / 2, (top + bottom) / 2), 'no data', fill='black', font=font,
              anchor='mm')

  # Legend box in the top-right corner of the plot area.
  row_height = 16
  text_width = max((draw.textlength(label, font=font) for label, _, _ in legend), default=0)
  box_left = right - 40 - text_width
  if legend:
    draw.rectangle([box_left - 6, top + 4, right - 6, top + 20 + (len(legend) - 1) * row_height],
                   fill='white', outline=(180, 180, 180))
  for row, (label, color, dashed) in enumerate(legend):
    y = top + 12 + row * row_height
    if dashed:
      _dashed_hline(draw, int(box_left), int(box_left) + 22, y, color)
    else:
      draw.line([(box_left, y), (box_left + 22, y)], fill=color, width=2)
    draw.text((box_left + 28, y), label, fill='black', font=font, anchor='lm')

  parent = os.path.dirname(path)
  if parent:
    os.makedirs(parent, exist_ok=True)
  image.save(path)
  return path
