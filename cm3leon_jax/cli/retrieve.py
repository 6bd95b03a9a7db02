r"""Give every document of a store its retrieved neighbours, as a new store version (Apache Beam).

  python tools/retrieve.py --store_dir=/tmp/store/train --index_dir=/tmp/store/train/index \
      --output_dir=/tmp/store_retrieved/train
  python tools/retrieve.py --store_dir=/tmp/store/validation --index_dir=/tmp/store/train/index \
      --output_dir=/tmp/store_retrieved/validation

Each query document is embedded with 20% of its caption's tokens dropped (--query_dropout, seeded
by --seed and the document id), the index is searched, and up to --k neighbours are chosen by the
rules of cm3leon_jax/retrieval/select.py (nothing scoring above --max_score, never the query or a
copy of it, no duplicates, documents with both modalities first). The neighbours' ids and tokens
are written into each record; the seqio tasks put them before the query. The index's bank may be
another split (e.g. validation queries retrieve from the training store).

Flags this tool does not know are Beam pipeline options (see tools/build_index.py for Dataflow).
"""

from absl import app, flags
from apache_beam.options.pipeline_options import PipelineOptions

from cm3leon_jax import cli
from cm3leon_jax.data.beam import parse_known_flags
from cm3leon_jax.retrieval.pipeline import RetrieveConfig, run_retrieve
from cm3leon_jax.retrieval.select import SelectionConfig

FLAGS = flags.FLAGS


def define_flags():
  """The tool's flags (defined when run, so tests can import the module)."""
  flags.DEFINE_string('store_dir', None, 'The store split whose documents get neighbours.',
                      required=True)
  flags.DEFINE_string('index_dir', None, 'An index folder from tools/build_index.py.',
                      required=True)
  flags.DEFINE_string('output_dir', None, 'The new store split folder to write.', required=True)
  flags.DEFINE_integer('k', 2, 'Neighbours per document (CM3Leon: 2).')
  flags.DEFINE_float('max_score', 0.9, 'Candidates scoring above it are near copies: skipped.')
  flags.DEFINE_float('query_dropout', 0.2, 'Share of caption tokens dropped before embedding.')
  flags.DEFINE_bool('prefer_both_modalities', True, 'Rank text+image documents first.')
  flags.DEFINE_integer('seed', 0, 'Query-dropout seed.')
  flags.DEFINE_integer('search_candidates', 16, 'Candidates searched besides k.')
  flags.DEFINE_integer('batch_size', 64, 'Documents per CLIP call and search.')


def main(argv):
  selection = SelectionConfig(k=FLAGS.k, max_score=FLAGS.max_score,
                              query_dropout=FLAGS.query_dropout,
                              prefer_both_modalities=FLAGS.prefer_both_modalities)
  config = RetrieveConfig(FLAGS.store_dir, FLAGS.index_dir, FLAGS.output_dir, selection,
                          FLAGS.seed, FLAGS.search_candidates, FLAGS.batch_size)
  print(run_retrieve(config, PipelineOptions(argv[1:])))


def run():
  """Entry point of tools/retrieve.py and `cm3leon-retrieve`."""
  define_flags()
  cli.run_app(main, __doc__, flags_parser=parse_known_flags)


if __name__ == '__main__':
  run()
