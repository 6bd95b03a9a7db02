r"""Convert pytorch-fid's Inception weights to safetensors, so FID runs read them without torch.

  python tools/convert_inception.py \
      --inception=~/.cache/torch/hub/checkpoints/pt_inception-2015-12-05-6726825d.pth \
      --output=~/fid/pt_inception-2015-12-05.safetensors

The file is read with torch.load(weights_only=True) and checked against the FID InceptionV3 (a
misshapen tensor is named by its layer); the safetensors file keeps pytorch-fid's tensor names.
Pass it to the FID tools with --inception or $CM3LEON_FID_INCEPTION.
"""

import os

from absl import flags

from cm3leon_jax import cli
from cm3leon_jax.interop import pytorch_fid

FLAGS = flags.FLAGS


def define_flags():
  """The tool's flags (defined when run, so tests can import the module)."""
  flags.DEFINE_string('inception', None,
                      f"pytorch-fid's {pytorch_fid.WEIGHTS_FILE} (default: "
                      f'${pytorch_fid.ENV_VAR}, else PyTorch\'s hub cache).')
  flags.DEFINE_string('output', None, 'The .safetensors file to write.', required=True)


def main(argv):
  del argv
  if not FLAGS.output.endswith('.safetensors'):
    raise ValueError(f'--output must end in .safetensors, got {FLAGS.output}.')
  source = pytorch_fid.find_weights(FLAGS.inception)
  output = os.path.expanduser(FLAGS.output)
  pytorch_fid.convert_to_safetensors(source, output)
  print(f'Wrote {output} from {source}.')


def run():
  """Entry point of tools/convert_inception.py and `cm3leon-convert-inception`."""
  define_flags()
  cli.run_app(main, __doc__)


if __name__ == '__main__':
  run()
