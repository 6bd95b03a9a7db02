"""The `fid` benchmark: FID Inception feature images/s, ours against pytorch-fid's module.

Both sides get the same batch of uint8 images (--fid_batch, --fid_size) and the same weights:
--inception's file, or random weights written in pytorch-fid's format (He-normal kernels) that
pytorch-fid loads from a temporary hub cache, exactly as it loads its download. Ours is the
jitted FIDInceptionV3 behind ``evaluation.features.inception_features`` (uint8 in, features out,
host transfers included); the peer is pytorch-fid's ``InceptionV3()`` in eval mode under
no_grad, fed the float [0, 1] NCHW tensor its data loader would give (prepared outside the timed
step). The features of both are compared and the largest difference reported.
"""

import os
import tempfile

import jax
import numpy as np
from absl import flags

from cm3leon_jax.cli.benchmarks import harness
from cm3leon_jax.evaluation.features import inception_features
from cm3leon_jax.interop import pytorch_fid

FLAGS = flags.FLAGS


def define_flags():
  flags.DEFINE_integer('fid_batch', 16, 'fid: images per call.')
  flags.DEFINE_integer('fid_size', 256, 'fid: image side in pixels (both resize it to 299).')
  flags.DEFINE_string('inception', None,
                      "fid: pytorch-fid's weight file; default random weights in its format.")


def _peer(weights: str):
  """pytorch-fid's InceptionV3, loading `weights` through its own hub-cache path."""
  import torch  # pylint: disable=g-import-not-at-top
  from pytorch_fid.inception import InceptionV3  # pylint: disable=g-import-not-at-top
  with tempfile.TemporaryDirectory() as torch_home:
    cached = os.path.join(torch_home, 'hub', 'checkpoints', pytorch_fid.WEIGHTS_FILE)
    os.makedirs(os.path.dirname(cached))
    os.symlink(os.path.abspath(weights), cached)
    old = os.environ.get('TORCH_HOME')
    os.environ['TORCH_HOME'] = torch_home
    try:
      network = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()
    finally:
      os.environ.pop('TORCH_HOME') if old is None else os.environ.update(TORCH_HOME=old)

  @torch.no_grad()
  def features(images):
    return network(images)[0][:, :, 0, 0]

  return features


def benchmark() -> str:
  """Our Inception features against pytorch-fid's; returns the RESULT line."""
  import torch  # pylint: disable=g-import-not-at-top
  threads = harness.torch_threads()
  batch, side = FLAGS.fid_batch, FLAGS.fid_size
  images = np.random.default_rng(1).integers(0, 256, (batch, side, side, 3), dtype=np.uint8)
  with tempfile.TemporaryDirectory() as folder:
    weights = FLAGS.inception or os.path.join(folder, pytorch_fid.WEIGHTS_FILE)
    if not FLAGS.inception:
      pytorch_fid.save_as_pth(pytorch_fid.random_state_dict(), weights)
    ours = inception_features(weights, batch_size=batch)
    peer = _peer(weights)
  peer_images = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255).contiguous()
  difference = float(np.abs(ours(images) - peer(peer_images).numpy()).max())
  seconds = harness.interleaved_medians(
      {'ours': lambda: ours(images), 'peer': lambda: peer(peer_images)}, FLAGS.steps,
      FLAGS.warmup)
  rate = {name: batch / s for name, s in seconds.items()}
  shapes = {'ours': harness.shape(batch=batch, height=side, width=side, features=2048),
            'peer': harness.shape(batch=peer_images.shape[0], height=peer_images.shape[2],
                                  width=peer_images.shape[3], features=2048)}
  ratio = harness.ratio(rate['ours'], rate['peer'])
  header = [
      f'## fid: Inception pool features of {side}x{side} uint8 images (resized to 299), float32, '
      f'{threads} threads',
      '',
      f'weights: {FLAGS.inception or "random, in pytorch-fid format"}; batch={batch}; '
      f'steps={FLAGS.steps} (median) after warmup={FLAGS.warmup}',
      harness.shapes_line(shapes['ours'], shapes['peer']),
      f'peer: pytorch-fid InceptionV3, torch {harness.torch_version()}, eval, no_grad; ours: '
      f'jax {jax.__version__}, jitted; largest feature difference {difference:.2e}',
  ]
  print(harness.comparison_report(
      header, '| side | seconds per batch | images/s |',
      [(name, f'{seconds[name]:.4f}', f'{rate[name]:.2f}') for name in ('ours', 'peer')]
      + [('ours/peer', '', f'{ratio:.3f}')]))
  return harness.result_line(
      'fid', ours=f'{rate["ours"]:.2f}', peer=f'{rate["peer"]:.2f}', unit='images/s',
      ratio=f'{ratio:.3f}', max_feature_difference=f'{difference:.2e}',
      ours_shape=shapes['ours'], peer_shape=shapes['peer'])
