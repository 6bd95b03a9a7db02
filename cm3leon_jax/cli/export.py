r"""Export a training run (or an exported model) as one self-contained folder.

  python tools/export.py --checkpoint=/tmp/cm3leon_quickstart/model \
      --output_dir=/tmp/cm3leon_exported [--dtype=bfloat16]

The folder holds the decoder in transformers' layout (config.json + model.safetensors: OPT for the
'cm3leon' family, Chameleon for 'chameleon'), model.json, the text vocabulary and the image
tokenizer (see cm3leon_jax/decoding/export.py). tools/generate.py and tools/caption.py take it as
--checkpoint; transformers' OPTForCausalLM / ChameleonForConditionalGeneration.from_pretrained
load it. A 'chameleon' export is a whole Chameleon checkpoint: tokenizer.json, the config's
vocabulary_map and the VQ-GAN's encoder too, so transformers generates from it. A Chameleon or
Anole folder given as --checkpoint is written back in its own layout and ids. The newest
checkpoint's parameters are exported, never the optimizer state.
"""

from absl import app, flags

from cm3leon_jax import cli
from cm3leon_jax.decoding.export import export_model
from cm3leon_jax.decoding.pretrained import Pretrained

FLAGS = flags.FLAGS


def define_flags():
  """The tool's flags (defined when run, so tests can import the module)."""
  flags.DEFINE_string('checkpoint', None, 'A training run folder (MODEL_DIR) or an exported model.',
                      required=True)
  flags.DEFINE_string('output_dir', None, 'A new (or empty) folder to export into.', required=True)
  flags.DEFINE_string('image_tokenizer', None, 'ImageTokenizer folder (default: the run\'s).')
  flags.DEFINE_enum('dtype', None, ['float32', 'bfloat16', 'float16'],
                    'dtype of the written weights (default: the parameters\' own).')


def main(argv):
  del argv
  model = Pretrained.load(FLAGS.checkpoint, FLAGS.image_tokenizer, unroll_layers=False)
  print(export_model(model, FLAGS.output_dir, FLAGS.dtype))


def run():
  """Entry point of tools/export.py and `cm3leon-export`."""
  define_flags()
  cli.run_app(main, __doc__)


if __name__ == '__main__':
  run()
