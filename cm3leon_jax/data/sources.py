"""Sources of image-caption pairs behind one small interface, so one pipeline serves them all.

A source knows how many raw records it holds and reads any contiguous range of them, so a Beam
pipeline can split the work into ranges and read each range on any worker:

  source.num_records()          -> int
  source.read(start, stop)      -> iterator of RawRecord, indices start .. stop - 1
  source.describe()             -> JSON-able dict for the store's manifest

Three sources exist: ``SyntheticSource`` (the built-in dataset), ``CocoCaptionsSource`` (MS-COCO
captions through tensorflow-datasets, each image with its captions) and ``JsonlSource`` (a manifest
of ``{"image": "relative/path.jpg", "text": "..."}`` lines beside an image folder; how users bring
their own data). Reading never raises on a bad record: a record the source itself cannot parse
(broken JSON, text that is not UTF-8) comes back with ``error`` set, so the pipeline counts it.
"""

import dataclasses
import json
import os
from typing import Any, Dict, Iterator, Optional, Sequence, Tuple, Union

import numpy as np

from cm3leon_jax.data.synthetic import SyntheticConfig, SyntheticDataset

# Raw image: encoded file bytes, a path to read, decoded pixels, or None for a text-only record.
RawImage = Union[bytes, str, np.ndarray, None]

# Synthetic validation documents start here, far from the training indices, so they never overlap.
SYNTHETIC_SPLIT_OFFSETS = {'train': 0, 'validation': 10_000_000, 'test': 20_000_000}


@dataclasses.dataclass
class RawRecord:
  """One raw image with its captions, before any checking or tokenizing.

  Attributes:
    index: position in the source (orders the store deterministically).
    id: a stable, unique name used in the store and in error reports.
    texts: the captions (one document is made per caption).
    image: see ``RawImage``.
    metadata: small JSON-able facts kept with the document (file name, COCO image id, ...).
    error: set by the source when it could not parse the record at all.
  """

  index: int
  id: str
  texts: Tuple[str, ...] = ()
  image: RawImage = None
  metadata: Dict[str, Any] = dataclasses.field(default_factory=dict)
  error: Optional[str] = None


class SyntheticSource:
  """`count` examples of the built-in synthetic dataset for one split."""

  def __init__(self, count: int, split: str = 'train', config: SyntheticConfig = SyntheticConfig()):
    if split not in SYNTHETIC_SPLIT_OFFSETS:
      raise ValueError(f'Unknown synthetic split {split!r}; choose one of '
                       f'{sorted(SYNTHETIC_SPLIT_OFFSETS)}.')
    self.count, self.split, self.config = count, split, config
    self._dataset = SyntheticDataset(config)

  def num_records(self) -> int:
    return self.count

  def read(self, start: int, stop: int) -> Iterator[RawRecord]:
    offset = SYNTHETIC_SPLIT_OFFSETS[self.split]
    for index in range(start, stop):
      example = self._dataset[offset + index]
      yield RawRecord(index, f'synthetic/{self.split}/{example.index}', (example.caption,),
                      example.image, {'synthetic_index': example.index})

  def describe(self) -> Dict[str, Any]:
    return {'source': 'synthetic', 'split': self.split, 'count': self.count,
            'config': dataclasses.asdict(self.config)}


class CocoCaptionsSource:
  """MS-COCO captions (Karpathy splits) through tensorflow-datasets' ``coco_captions``.

  Each record is one image with all of its captions. The dataset must already be prepared in
  `data_dir` (tfds downloads nothing here); tests use ``tfds.testing.mock_data``.
  """

  def __init__(self, split: str = 'train', data_dir: Optional[str] = None,
               name: str = 'coco_captions'):
    self.split, self.data_dir, self.name = split, data_dir, name

  def _builder(self):
    import tensorflow_datasets as tfds  # Heavy; only this source needs it.
    return tfds.builder(self.name, data_dir=self.data_dir)

  def _has_split_info(self, builder) -> bool:
    # Prepared data always records its splits; only tfds.testing.mock_data leaves them empty (and
    # it ignores split slicing too), so then the split is counted and ranges are skip/take.
    return self.split in builder.info.splits

  def num_records(self) -> int:
    builder = self._builder()
    if self._has_split_info(builder):
      return builder.info.splits[self.split].num_examples
    return int(builder.as_dataset(split=self.split).reduce(0, lambda n, _: n + 1))

  def read(self, start: int, stop: int) -> Iterator[RawRecord]:
    import tensorflow_datasets as tfds
    builder = self._builder()
    if self._has_split_info(builder):
      dataset = builder.as_dataset(split=f'{self.split}[{start}:{stop}]', shuffle_files=False)
    else:
      dataset = builder.as_dataset(split=self.split, shuffle_files=False)
      dataset = dataset.skip(start).take(stop - start)
    for offset, example in enumerate(tfds.as_numpy(dataset)):
      image_id = int(example['image/id'])
      record = RawRecord(start + offset, f'coco/{image_id}', image=example['image'],
                         metadata={'image_id': image_id,
                                   'filename': example['image/filename'].decode('utf-8', 'replace')})
      try:
        record.texts = tuple(t.decode('utf-8') for t in example['captions']['text'])
      except UnicodeDecodeError as e:
        record.error = f'caption is not UTF-8 ({e})'
      yield record

  def describe(self) -> Dict[str, Any]:
    return {'source': 'tfds', 'name': self.name, 'split': self.split, 'data_dir': self.data_dir}


class JsonlSource:
  """A JSONL manifest, one ``{"image": path, "text": caption}`` object per line.

  Image paths are relative to `image_root` (default: the manifest's folder). Optional keys: ``id``
  (default ``<manifest name>:<line number>``), ``texts`` (a list instead of ``text``), and anything
  else, which is kept as metadata. A line without ``image`` is a text-only record.
  """

  def __init__(self, manifest: str, image_root: Optional[str] = None):
    if not os.path.isfile(manifest):
      raise FileNotFoundError(f'JSONL manifest {manifest} does not exist.')
    self.manifest = os.path.abspath(manifest)
    self.image_root = os.path.abspath(image_root or os.path.dirname(self.manifest))
    with open(self.manifest, 'rb') as f:
      self._lines = [line for line in f.read().split(b'\n') if line.strip()]

  def num_records(self) -> int:
    return len(self._lines)

  def read(self, start: int, stop: int) -> Iterator[RawRecord]:
    for index in range(start, stop):
      yield self._parse(index, self._lines[index])

  def _parse(self, index: int, line: bytes) -> RawRecord:
    record = RawRecord(index, f'{os.path.basename(self.manifest)}:{index + 1}')
    try:
      entry = json.loads(line.decode('utf-8'))
    except UnicodeDecodeError as e:
      record.error = f'line is not UTF-8 ({e})'
      return record
    except json.JSONDecodeError as e:
      record.error = f'line is not valid JSON ({e})'
      return record
    if not isinstance(entry, dict):
      record.error = f'line is a JSON {type(entry).__name__}, not an object'
      return record
    record.id = str(entry.pop('id', record.id))
    texts = entry.pop('texts', None)
    texts = [entry.pop('text')] if texts is None and 'text' in entry else texts or []
    if not all(isinstance(t, str) for t in texts):
      record.error = 'text must be a string (texts a list of strings)'
      return record
    record.texts = tuple(texts)
    image = entry.pop('image', None)
    record.image = None if image is None else os.path.join(self.image_root, image)
    record.metadata = {'image': image, **entry}
    return record

  def describe(self) -> Dict[str, Any]:
    return {'source': 'jsonl', 'manifest': self.manifest, 'image_root': self.image_root}


def read_ranges(num_records: int, num_ranges: int) -> Sequence[Tuple[int, int]]:
  """Split [0, num_records) into at most `num_ranges` contiguous, nearly equal (start, stop) ranges."""
  bounds = np.linspace(0, num_records, max(1, min(num_ranges, num_records)) + 1).round().astype(int)
  return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
