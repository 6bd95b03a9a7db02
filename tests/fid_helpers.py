"""A random FID Inception weight file in pytorch-fid's exact format, and images with varied
content, for the FID tests.

The weights are written the way pytorch-fid's download is stored (PyTorch's hub cache under
TORCH_HOME), so pytorch-fid's own ``InceptionV3()`` loads them without a download and serves as
the oracle.
"""

import os
from unittest import mock

import numpy as np
from PIL import Image

import shared_data
from helpers import run_tool


def _random_state_dict(rng):
  """pytorch-fid's tensors, random (so its strict load also checks the names our loader maps),
  with BatchNorm's affine parameters spread around 1 and 0."""
  import torch  # pylint: disable=g-import-not-at-top
  from cm3leon_jax.interop import pytorch_fid  # pylint: disable=g-import-not-at-top

  tensors = pytorch_fid.random_state_dict(int(rng.integers(1 << 30)))
  for name in tensors:
    if name.endswith('bn.weight'):
      tensors[name] = rng.uniform(0.5, 1.5, tensors[name].shape)
    elif name.endswith('bn.bias'):
      tensors[name] = rng.normal(0, 0.2, tensors[name].shape)
  return {name: torch.tensor(x, dtype=torch.float32 if x.dtype.kind == 'f' else None)
          for name, x in tensors.items()}


def varied_images(rng, count, height, width):
  """float32 [count, height, width, 3] in [0, 1]: random colour grids of random coarseness,
  contrast and brightness, bilinearly enlarged (i.i.d. noise would give every image the same
  pooled features)."""
  out = []
  for _ in range(count):
    cells = int(rng.integers(2, 12))
    grid = rng.uniform(0, 1, (cells, cells, 3)) * rng.uniform(0.2, 1) + rng.uniform(0, 0.5)
    image = Image.fromarray((np.clip(grid, 0, 1) * 255).astype(np.uint8))
    out.append(np.asarray(image.resize((width, height), Image.BILINEAR), np.float32) / 255)
  return np.stack(out)


SAFETENSORS_NAME = 'inception.safetensors'


def write_random_fid_weights(path, seed=0):
  """Write a random pytorch-fid weight file at `path`.

  The network is built by pytorch-fid's own ``fid_inception_v3`` (its download replaced by our
  random tensors). Its BatchNorm statistics are then calibrated on a batch of 32 varied images,
  so activations stay normalised through the 94 layers and pooled features differ from image to
  image as real ones do: with uncalibrated statistics every image gets nearly the same features,
  and 8 calibration images leave activations growing with depth on other images.
  """
  import torch  # pylint: disable=g-import-not-at-top
  import pytorch_fid.inception as pfi  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(seed)
  with mock.patch.object(pfi, 'load_state_dict_from_url',
                         lambda *args, **kwargs: _random_state_dict(rng)):
    network = pfi.fid_inception_v3()
  for module in network.modules():
    if isinstance(module, torch.nn.BatchNorm2d):
      module.momentum = None  # A cumulative average over the calibration batch.
  network.train()
  images = torch.tensor(varied_images(rng, 32, 299, 299)).permute(0, 3, 1, 2)
  with torch.no_grad():
    network(2 * images - 1)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  torch.save(network.state_dict(), path)


def shared_torch_home(tmp_path_factory):
  """A TORCH_HOME whose hub cache holds the random FID weights, written once per test run, with
their safetensors conversion beside it (`SAFETENSORS_NAME`).

  Written by a process of its own: torchvision imported into a process that has imported
  TensorFlow (as the data tests have) can crash it."""
  from cm3leon_jax.interop import pytorch_fid  # pylint: disable=g-import-not-at-top

  def build(folder):
    path = os.path.join(folder, 'hub', 'checkpoints', pytorch_fid.WEIGHTS_FILE)
    run_tool(['-c', 'import sys; sys.path.insert(0, "tests"); import fid_helpers; '
              'from cm3leon_jax.interop import pytorch_fid; '
              'fid_helpers.write_random_fid_weights(sys.argv[1]); '
              'pytorch_fid.convert_to_safetensors(sys.argv[1], sys.argv[2])',
              path, os.path.join(folder, SAFETENSORS_NAME)])

  return shared_data.cached_folder(tmp_path_factory, 'fid_torch_home', build)
