"""A resumable zero-shot FID evaluation: prompts in shards, one kept sample per prompt, measured as
it is made, statistics merged at the end.

The prompts are cut into shards of `shard_size`; process p of P works on shards p, p + P, ...
Each finished shard is one `.npz` in `<output_dir>/shards/` (written atomically) holding, per
prompt, the Inception pool features, the CLIP image features, the CLIP score and, for synthetic
prompts, the judge's verdicts; a rerun skips finished shards. Sampling seeds depend on the shard
only, and the summary reads the shards in index order, so one process and several give the same
samples and the same statistics.
"""

import dataclasses
import glob
import hashlib
import json
import os
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

import numpy as np
from absl import logging

from cm3leon_jax.data.images import ImageError
from cm3leon_jax.evaluation import distances, fid_sources, synthetic_eval
from cm3leon_jax.evaluation.fid_sources import Prompt
from cm3leon_jax.evaluation.statistics import (FeatureStatistics, load_reference,
                                               save_npz_atomically)

SHARD_PATTERN = 'shard_{:05d}.npz'
JUDGE_KEYS = ('main_object', 'half_the_facts', 'caption_score')


class Measurements:
  """Everything measured of a batch of images: Inception features, CLIP features and scores, and
  (optionally) the synthetic judge's verdicts against their captions."""

  def __init__(self, inception, clip=None, judge: bool = False):
    """
    Args:
      inception: ``features.inception_features(...)`` (uint8 images -> [N, 2048]).
      clip: a ``clip_metrics.ClipMetrics`` for FD-CLIP and the CLIP score, or None.
      judge: add the synthetic judge's verdicts (captions of the synthetic grammar only).
    """
    self.inception, self.clip, self.judge = inception, clip, judge

  def __call__(self, images: np.ndarray, captions: Optional[Sequence[str]]) -> Dict[str, np.ndarray]:
    out = {'inception': self.inception(images)}
    if self.clip is not None:
      out['clip'] = self.clip.image_features(images)
      if captions is not None:
        out['clip_score'] = self.clip.clip_scores(out['clip'], captions)
    if self.judge and captions is not None:
      out['main_object'] = synthetic_eval.main_object_passes(images, captions)
      out['caption_score'] = synthetic_eval.caption_scores(images, captions)
      out['half_the_facts'] = out['caption_score'] >= 0.5
    return out


def shard_ranges(count: int, shard_size: int) -> List[range]:
  """The prompt indices of each shard."""
  return [range(start, min(start + shard_size, count)) for start in range(0, count, shard_size)]


def run_shards(prompts: Sequence[Prompt], sample: Callable[[Sequence[Prompt], int], np.ndarray],
               measure: Measurements, output_dir: str, shard_size: int, process_index: int = 0,
               process_count: int = 1) -> int:
  """Sample and measure this process's unfinished shards; returns how many it made.

  Args:
    sample: (a shard's prompts, the shard's index) -> the kept uint8 image of each prompt.
  """
  folder = os.path.join(output_dir, 'shards')
  os.makedirs(folder, exist_ok=True)
  ranges = shard_ranges(len(prompts), shard_size)
  mine = [s for s in range(process_index, len(ranges), process_count)
          if not os.path.exists(os.path.join(folder, SHARD_PATTERN.format(s)))]
  done_before = len(range(process_index, len(ranges), process_count)) - len(mine)
  logging.info('Process %d: %d of its shards done before, %d to go (%d prompts each).',
               process_index, done_before, len(mine), shard_size)
  start = time.time()
  for made, shard in enumerate(mine, start=1):
    batch = [prompts[i] for i in ranges[shard]]
    images = sample(batch, shard)
    arrays = measure(images, [p.caption for p in batch])
    save_npz_atomically(os.path.join(folder, SHARD_PATTERN.format(shard)),
                     indices=np.array([p.index for p in batch]), **arrays)
    _log_progress(made, len(mine), sum(len(ranges[s]) for s in mine[:made]), start)
  return len(mine)


def _log_progress(made: int, total: int, images: int, start: float) -> None:
  elapsed = time.time() - start
  rate = images / elapsed if elapsed else float('inf')
  eta = elapsed / made * (total - made)
  logging.info('Shard %d/%d: %d images in %.0fs (%.2f images/s), ETA %.0fs.', made, total,
               images, elapsed, rate, eta)


def read_shards(output_dir: str, count: int, shard_size: int) -> Dict[str, np.ndarray]:
  """Every shard's arrays concatenated in prompt order.

  Raises:
    FileNotFoundError: a shard is missing (naming how many), so the run is not finished.
  """
  paths = [os.path.join(output_dir, 'shards', SHARD_PATTERN.format(s))
           for s in range(len(shard_ranges(count, shard_size)))]
  missing = [p for p in paths if not os.path.exists(p)]
  if missing:
    raise FileNotFoundError(f'{len(missing)} of {len(paths)} shards are not finished yet (e.g. '
                            f'{missing[0]}); run again to complete them.')
  parts: Dict[str, List[np.ndarray]] = {}
  for path in paths:
    with np.load(path) as data:
      for key in data.files:
        parts.setdefault(key, []).append(data[key])
  merged = {key: np.concatenate(values) for key, values in parts.items()}
  if not np.array_equal(merged['indices'], np.arange(count)):
    raise ValueError(f'The shards in {output_dir} do not hold prompts 0..{count - 1} in order: '
                     'they were made with other settings.')
  return merged


def fingerprint(*parts: Any) -> str:
  """A short hash identifying a reference (source, resolution, feature network)."""
  return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def file_fingerprint(path: str) -> str:
  """A short sha256 of a file's bytes (which Inception weights made a reference)."""
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      digest.update(block)
  return digest.hexdigest()[:12]


def _batches(images: Iterator[np.ndarray], resolution: int, size: int) -> Iterator[np.ndarray]:
  batch, unusable = [], 0
  for image in images:
    try:
      batch.append(fid_sources.resize_for_reference(image, resolution))
    except ImageError as e:  # Counted and skipped, as bad records are everywhere.
      unusable += 1
      logging.warning('Reference image skipped (%d so far): %s', unusable, e)
      continue
    if len(batch) == size:
      yield np.stack(batch)
      batch = []
  if batch:
    yield np.stack(batch)


def reference_statistics(source, measure: Measurements, resolution: int, cache_prefix: str,
                         batch_size: int = 50) -> Dict[str, str]:
  """Paths of the reference `.npz` files ('inception', and 'clip' with a CLIP), computed from the
  source's real images (resized as the samples are) unless `cache_prefix` files exist."""
  paths = {'inception': cache_prefix + '_inception.npz'}
  if measure.clip is not None:
    paths['clip'] = cache_prefix + '_clip.npz'
  if all(os.path.exists(p) for p in paths.values()):
    logging.info('Reference statistics from the cache: %s.', ', '.join(paths.values()))
    return paths
  features: Dict[str, List[np.ndarray]] = {key: [] for key in paths}
  for batch in _batches(source.reference_images(), resolution, batch_size):
    measured = measure(batch, None)
    for key in paths:
      features[key].append(measured[key])
  for key, path in paths.items():
    if not features[key]:
      raise ValueError(f'The {source.name} source has no real images for reference statistics; '
                       'give --reference_stats instead.')
    stacked = np.concatenate(features[key])
    FeatureStatistics.of(stacked).save(path, features=stacked)
  logging.info('Reference statistics of %d real images written to %s.',
               len(np.concatenate(features['inception'])), ', '.join(paths.values()))
  return paths


@dataclasses.dataclass(frozen=True)
class DistanceSettings:
  """How the distances are computed.

  Attributes:
    kid_subsets, kid_subset_size: KID's subsets (torch-fidelity's defaults: 100 of 1,000).
    pytorch_fid_form: also compute the Frechet distance as pytorch-fid does (scipy's sqrtm,
      about 10 s at 2048 dimensions on a 2-core CPU); the eigenvalue form is always computed.
  """

  kid_subsets: int = 100
  kid_subset_size: int = 1000
  pytorch_fid_form: bool = True


def distances_to_reference(features: np.ndarray, reference_path: str,
                           settings: DistanceSettings) -> Dict[str, Any]:
  """The Frechet distance (the eigenvalue form, and pytorch-fid's when asked), and KID when the
  reference kept its features."""
  mu, sigma = load_reference(reference_path, features.shape[1])
  ours = FeatureStatistics.of(features)
  out = {'frechet_distance_eigh': distances.frechet_distance_eigh(ours.mu, ours.sigma, mu, sigma),
         'num_images': ours.count}
  if settings.pytorch_fid_form:
    out['frechet_distance'] = _pytorch_form_or_none(ours, mu, sigma)
  with np.load(reference_path) as data:
    reference_features = data['features'] if 'features' in data.files else None
  if reference_features is not None and min(len(features), len(reference_features)) >= 2:
    out['kid'] = dataclasses.asdict(distances.kernel_distance(
        features, reference_features, settings.kid_subsets, settings.kid_subset_size))
  return out


def _pytorch_form_or_none(ours: FeatureStatistics, mu, sigma) -> Optional[float]:
  try:
    return distances.frechet_distance(ours.mu, ours.sigma, mu, sigma)
  except ValueError as e:  # A large imaginary part: pytorch-fid would stop; the eigh form stands.
    logging.warning('pytorch-fid\'s form of the distance failed (%s); see the eigenvalue form.', e)
    return None


def summarise(merged: Dict[str, np.ndarray], references: Dict[str, str],
              settings: DistanceSettings) -> Dict[str, Any]:
  """The metrics of merged shards against the reference files."""
  metrics = {'fid': distances_to_reference(merged['inception'], references['inception'],
                                           settings)}
  if 'clip' in merged and 'clip' in references:
    metrics['fd_clip'] = distances_to_reference(merged['clip'], references['clip'], settings)
  if 'clip_score' in merged:
    metrics['clip_score'] = float(np.mean(merged['clip_score']))
  judged = {key: float(np.mean(merged[key])) for key in JUDGE_KEYS if key in merged}
  if judged:
    metrics['synthetic_judge'] = judged
  return metrics


def images_in_folder(folder: str) -> List[str]:
  """The image files of a folder (pytorch-fid's extensions), sorted."""
  extensions = ('bmp', 'jpg', 'jpeg', 'pgm', 'png', 'ppm', 'tif', 'tiff', 'webp')
  return sorted(p for p in glob.glob(os.path.join(folder, '*'))
                if p.rsplit('.', 1)[-1].lower() in extensions)


def measure_folder(folder: str, measure: Measurements) -> Dict[str, np.ndarray]:
  """Inception (and CLIP) features of a folder's images, in file order; images of one size are
  measured together (they are not resized: the Inception resizes, as pytorch-fid's does)."""
  from cm3leon_jax.data import images as image_lib  # pylint: disable=g-import-not-at-top
  paths = images_in_folder(folder)
  if not paths:
    raise FileNotFoundError(f'{folder} holds no images (looked for pytorch-fid\'s extensions).')
  pixels = [np.asarray(image_lib.load_image(path)) for path in paths]
  by_size: Dict[tuple, List[int]] = {}
  for i, image in enumerate(pixels):
    by_size.setdefault(image.shape, []).append(i)
  out: Dict[str, np.ndarray] = {}
  for indices in by_size.values():
    measured = measure(np.stack([pixels[i] for i in indices]), None)
    for key, values in measured.items():
      out.setdefault(key, np.zeros((len(paths),) + values.shape[1:], values.dtype))[indices] = values
  return out


def evaluate_folder(folder: str, reference_path: str, measure: Measurements,
                    settings: DistanceSettings) -> Dict[str, Any]:
  """FID (and KID) of a folder of images against reference statistics, like pytorch-fid's
  ``python -m pytorch_fid FOLDER STATS.npz``."""
  if not reference_path:
    raise ValueError('Measuring a folder of images needs --reference_stats (a .npz with mu and '
                     'sigma).')
  measured = measure_folder(folder, measure)
  return {'metrics': {'fid': distances_to_reference(measured['inception'], reference_path,
                                                    settings)},
          'protocol': {'images': os.path.abspath(folder), 'reference': reference_path,
                       'inception': 'pytorch-fid InceptionV3 (2015-12-05 TF weights), pool3'},
          'counts': {'images': len(measured['inception'])}}
