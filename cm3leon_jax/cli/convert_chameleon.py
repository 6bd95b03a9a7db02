r"""Convert Meta's Chameleon release into transformers' layout, for users who want both.

  python tools/convert_chameleon.py --release=~/chameleon/data --output_dir=~/chameleon-7b-hf
  python tools/convert_chameleon.py --release=~/chameleon/data/models/30b --output_dir=...

The release holds models/<size>/consolidated*.pth + params.json and tokenizer/ (text_tokenizer.json,
vqgan.ckpt, vqgan.yaml); name the release (when it holds one model) or a models/<size> folder.
The weight files are read with torch.load(weights_only=True): nothing in them is unpickled.
The output folder loads with ChameleonForConditionalGeneration.from_pretrained and with this
project's tools (--checkpoint=OUTPUT_DIR); it also keeps Meta's full VQ-GAN in tokenizer/, since
transformers' model holds only the encoder and cannot turn codes into images. Either folder works
here directly; converting is only for transformers.
"""

from absl import flags

from cm3leon_jax import cli
from cm3leon_jax.interop import meta_to_transformers

FLAGS = flags.FLAGS


def define_flags():
  """The tool's flags (defined when run, so tests can import the module)."""
  flags.DEFINE_string('release', None, "Meta's release folder, or one of its models/<size>.",
                      required=True)
  flags.DEFINE_string('output_dir', None, 'The transformers folder to write.', required=True)
  flags.DEFINE_enum('dtype', 'bfloat16', ['bfloat16', 'float32'],
                    'dtype of the written tensors (the release is bfloat16).')


def main(argv):
  del argv
  output = meta_to_transformers.convert_to_transformers(FLAGS.release, FLAGS.output_dir,
                                                        FLAGS.dtype)
  print(f'Wrote {output}.')


def run():
  """Entry point of tools/convert_chameleon.py and `cm3leon-convert-chameleon`."""
  define_flags()
  cli.run_app(main, __doc__)


if __name__ == '__main__':
  run()
