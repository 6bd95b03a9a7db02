r"""Embed a document store with a frozen CLIP and build its memory-bank index (Apache Beam).

  python tools/build_index.py --store_dir=/tmp/store/train --clip=/tmp/clip

The store must have been preprocessed with the same CLIP (tools/preprocess.py --clip=...), which
stored each image's CLIP embedding; this stage embeds the captions, makes each document's embedding
(the mean of its normalised text and image embeddings) and indexes them: brute force for small
banks, ScaNN (tree + asymmetric hashing + exact reorder) from 20,000 documents (--method).
Writes ``<index_dir>`` (default ``<store_dir>/index``); tools/retrieve.py reads it.

Flags this tool does not know are Beam pipeline options, e.g. on Dataflow ``--runner=DataflowRunner
--project=P --region=R --temp_location=gs://B/tmp --requirements_file=requirements.txt
--extra_package=dist/cm3leon_jax-0.1.0-py3-none-any.whl`` (the wheel from ``python -m build``),
with gs:// paths for --store_dir and --index_dir (the index is written through a local folder and
copied) and a --clip folder the workers can read.
"""

from absl import app, flags
from apache_beam.options.pipeline_options import PipelineOptions

from cm3leon_jax import cli
from cm3leon_jax.data.beam import parse_known_flags
from cm3leon_jax.retrieval.index import IndexConfig
from cm3leon_jax.retrieval.pipeline import BuildConfig, run_build

FLAGS = flags.FLAGS


def define_flags():
  """The tool's flags (defined when run, so tests can import the module)."""
  flags.DEFINE_string('store_dir', None, 'The store split to index (<store>/<split>).',
                      required=True)
  flags.DEFINE_string('clip', None, 'CLIP folder (the one the store was preprocessed with).',
                      required=True)
  flags.DEFINE_string('index_dir', None, 'Where to write the index (default <store_dir>/index).')
  flags.DEFINE_enum('method', 'auto', ['auto', 'brute_force', 'scann'],
                    "'auto': brute force below --brute_force_below documents, else ScaNN.")
  flags.DEFINE_integer('brute_force_below', 20_000, "Bank size where 'auto' switches to ScaNN.")
  flags.DEFINE_integer('num_leaves', None, 'ScaNN tree partitions (default about sqrt(rows)).')
  flags.DEFINE_integer('num_leaves_to_search', None, 'Partitions searched per query.')
  flags.DEFINE_integer('reorder', 100, 'Candidates rescored exactly after hashing.')
  flags.DEFINE_integer('batch_size', 64, 'Documents per CLIP call.')


def main(argv):
  index = IndexConfig(method=FLAGS.method, brute_force_below=FLAGS.brute_force_below,
                      num_leaves=FLAGS.num_leaves, num_leaves_to_search=FLAGS.num_leaves_to_search,
                      reorder=FLAGS.reorder)
  config = BuildConfig(FLAGS.store_dir, FLAGS.clip, FLAGS.index_dir, index, FLAGS.batch_size)
  print(run_build(config, PipelineOptions(argv[1:])))


def run():
  """Entry point of tools/build_index.py and `cm3leon-build-index`."""
  define_flags()
  cli.run_app(main, __doc__, flags_parser=parse_known_flags)


if __name__ == '__main__':
  run()
