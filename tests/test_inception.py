"""FID's InceptionV3 in Flax against pytorch-fid's module (the oracle), on random weights in
pytorch-fid's exact file format."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fid_helpers
from cm3leon_jax.evaluation import features
from cm3leon_jax.interop import pytorch_fid
from cm3leon_jax.interop.errors import CheckpointMismatchError
from cm3leon_jax.models.inception import FIDInceptionV3, resize_bilinear


@pytest.fixture(scope='module')
def torch_home(tmp_path_factory):
  return fid_helpers.shared_torch_home(tmp_path_factory)


@pytest.fixture(scope='module')
def weights_path(torch_home):
  return os.path.join(torch_home, 'hub', 'checkpoints', pytorch_fid.WEIGHTS_FILE)


@pytest.fixture(scope='module')
def variables(weights_path):
  return pytorch_fid.load_fid_inception(weights_path)


@pytest.fixture(scope='module')
def oracle(torch_home):
  """pytorch-fid's InceptionV3(), loading the random weights from the seeded hub cache."""
  import torch  # pylint: disable=g-import-not-at-top
  from pytorch_fid.inception import InceptionV3  # pylint: disable=g-import-not-at-top
  old = os.environ.get('TORCH_HOME')
  os.environ['TORCH_HOME'] = torch_home
  try:
    network = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()
  finally:
    if old is None:
      del os.environ['TORCH_HOME']
    else:
      os.environ['TORCH_HOME'] = old

  def features(images, dtype=torch.float32):
    with torch.no_grad():
      tensor = torch.tensor(images).permute(0, 3, 1, 2).to(dtype)
      return network.to(dtype)(tensor)[0][:, :, 0, 0].numpy()

  return features


SIZES = [(299, 299), (256, 256), (512, 512), (200, 333)]


def _varied(height, width):
  return fid_helpers.varied_images(np.random.default_rng(height + width), 4, height, width)


@pytest.mark.parametrize('height,width', SIZES)
def test_pool_features_equal_pytorch_fid_in_float64(variables, oracle, height, width):
  """Both networks evaluated in float64 agree far beyond float32's rounding: any difference of
  structure shows. A resize that antialiases moves features by 0.1 to 0.5 here (512 and
  200x333), a pool that counts the padding by 0.9 to 3 (every size)."""
  import torch  # pylint: disable=g-import-not-at-top
  images = _varied(height, width).astype(np.float64)
  want = oracle(images, torch.float64)
  with jax.enable_x64(True):
    variables64 = jax.tree.map(lambda x: np.asarray(x, np.float64), variables)
    got = np.asarray(FIDInceptionV3(dtype=jnp.float64).apply(variables64, images))
  assert got.shape == (4, 2048) and got.dtype == np.float64
  np.testing.assert_allclose(got, want, atol=1e-9, rtol=0)
  # The features really vary across images: their spread across images is a fair share of their
  # size, and 500 times the float32 tolerance below.
  spread = want.std(axis=0).mean()
  assert spread > 0.2 * np.abs(want).mean() and spread > 0.05, spread


@pytest.mark.parametrize('height,width', SIZES[3:])
def test_float32_pool_features_are_as_close_to_pytorch_fid_as_rounding_allows(
    variables, oracle, height, width):
  """In float32 each network lies within about 1e-4 of the float64 features (which reach about
  10 here), so the two differ by up to about 2e-4 where the features are largest."""
  images = _varied(height, width)
  want = oracle(images)
  got = np.asarray(FIDInceptionV3().apply(variables, images))
  assert got.dtype == np.float32
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize('in_size,out_size', [((512, 512), 299), ((200, 333), 299),
                                             ((256, 256), 299), ((37, 1000), 64)])
def test_resize_equals_torch_interpolate_without_antialiasing(in_size, out_size):
  import torch  # pylint: disable=g-import-not-at-top
  images = np.random.default_rng(0).uniform(0, 1, (2, *in_size, 3)).astype(np.float32)
  want = torch.nn.functional.interpolate(torch.tensor(images).permute(0, 3, 1, 2),
                                         size=(out_size, out_size), mode='bilinear',
                                         align_corners=False).permute(0, 2, 3, 1).numpy()
  got = np.asarray(resize_bilinear(images, out_size))
  np.testing.assert_allclose(got, want, atol=1e-6)


def test_the_safetensors_conversion_loads_the_same_variables(torch_home, variables):
  # fid_helpers wrote it with pytorch_fid.convert_to_safetensors (cm3leon-convert-inception).
  again = pytorch_fid.load_fid_inception(os.path.join(torch_home, fid_helpers.SAFETENSORS_NAME))
  assert jax.tree.structure(variables) == jax.tree.structure(again)
  for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(again)):
    np.testing.assert_array_equal(a, b)


def test_weights_are_found_through_the_environment_and_the_hub_cache(weights_path, torch_home,
                                                                     monkeypatch, tmp_path):
  monkeypatch.setenv('TORCH_HOME', str(tmp_path))  # An empty hub cache.
  monkeypatch.delenv(pytorch_fid.ENV_VAR, raising=False)
  with pytest.raises(pytorch_fid.InceptionWeightsNotFoundError) as missing:
    pytorch_fid.find_weights()
  message = str(missing.value)
  assert pytorch_fid.WEIGHTS_FILE in message and pytorch_fid.WEIGHTS_URL in message
  assert '--inception' in message and pytorch_fid.ENV_VAR in message
  monkeypatch.setenv(pytorch_fid.ENV_VAR, weights_path)
  assert pytorch_fid.find_weights() == weights_path
  monkeypatch.delenv(pytorch_fid.ENV_VAR)
  monkeypatch.setenv('TORCH_HOME', torch_home)
  assert pytorch_fid.find_weights() == weights_path
  with pytest.raises(pytorch_fid.InceptionWeightsNotFoundError, match='not found at /no/such'):
    pytorch_fid.find_weights('/no/such/file.pth')


def test_a_misshapen_tensor_is_named_by_its_layer(weights_path):
  tensors = pytorch_fid.read_tensors(weights_path)
  tensors['Mixed_6c.branch7x7_2.conv.weight'] = np.zeros((160, 160, 7, 1), np.float32)
  tensors['fc.weight'] = np.zeros((1000, 2048), np.float32)  # torchvision's ImageNet head.
  del tensors['Mixed_7c.branch_pool.bn.running_var']
  with pytest.raises(CheckpointMismatchError) as error:
    pytorch_fid.variables_from_state_dict(tensors, 'the test file')
  message = str(error.value)
  assert ('layer Mixed_6c.branch7x7_2.conv.weight: expected shape (160, 160, 1, 7), found '
          '(160, 160, 7, 1)') in message
  assert 'layer fc.weight' in message and '1008' in message
  assert 'missing Mixed_7c.branch_pool.bn.running_var' in message


def test_a_file_that_is_not_a_torch_file_gets_a_clear_error(tmp_path):
  path = tmp_path / 'inception.pth'
  path.write_bytes(b'not a checkpoint')
  with pytest.raises(CheckpointMismatchError, match='not a PyTorch weight file'):
    pytorch_fid.load_fid_inception(str(path))


def test_batched_features_sharded_over_eight_devices_equal_one_call(weights_path, variables):
  assert jax.local_device_count() == 8
  images = (_varied(96, 80) * 255).astype(np.uint8)[:3]  # 3 images: one short batch of 8.
  extractor = features.inception_features(weights_path, batch_size=5)
  assert extractor.batch_size == 8 and extractor.mesh.devices.size == 8
  got = extractor(images)
  want = FIDInceptionV3().apply(variables, images.astype(np.float32) / 255)
  assert got.shape == (3, 2048)
  # Jitted and fused, the rounding differs from the op-by-op call as much as from torch's.
  np.testing.assert_allclose(got, np.asarray(want), atol=1e-4, rtol=1e-4)
  with pytest.raises(ValueError, match='uint8 images'):
    extractor(images.astype(np.float32))
