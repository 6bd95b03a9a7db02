"""Beam pieces shared by the pipelines that write document stores (preprocessing, retrieval)."""

import os
from typing import Iterable, Optional, Tuple

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from cm3leon_jax.data import store as store_lib


class WriteShard(beam.DoFn):
  """Writes one shard's documents, sorted; emits (file name, count)."""

  def __init__(self, output_dir: str, num_shards: int):
    self._output_dir, self._num_shards = output_dir, num_shards

  def process(self, keyed: Tuple[int, Iterable[store_lib.Document]]):
    shard, documents = keyed
    documents = list(documents)
    path = store_lib.write_shard(self._output_dir, shard, self._num_shards, documents)
    yield os.path.basename(path), len(documents)


def parse_known_flags(argv):
  """For Beam tools' app.run: absl parses the flags it knows; the rest stay in argv for Beam."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  return flags.FLAGS(argv, known_only=True)


def local_runner_by_default(options: Optional[PipelineOptions]) -> PipelineOptions:
  """The options, with the FnApiRunner when no --runner was given.

  Beam's DirectRunner first tries to download its Prism runner from GitHub (and falls back after a
  network error); the FnApiRunner it falls back to is what runs here, with --direct_num_workers
  and --direct_running_mode, and needs no network.
  """
  # An empty list: PipelineOptions() would parse sys.argv, and warn about each of the tool's own flags.
  options = options or PipelineOptions([])
  if options.view_as(StandardOptions).runner is None:
    options.view_as(StandardOptions).runner = 'FnApiRunner'
  return options
