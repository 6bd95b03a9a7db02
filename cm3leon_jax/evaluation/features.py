"""Image features for distribution metrics, computed in fixed-size jitted batches sharded over the
batch axes of a device mesh: FID's Inception pool features and CLIP image embeddings.

Images arrive as uint8 [N, H, W, 3] (what decoders and image files give); each extractor does
its own preprocessing on the device. A short last batch is padded to the batch size (one
compiled program) and the padding's rows are dropped from the result.
"""

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from cm3leon_jax import partitioning
from cm3leon_jax.interop import pytorch_fid
from cm3leon_jax.models.inception import FEATURE_DIM, FIDInceptionV3

# Data-parallel only: the extractors are small, so their weights are replicated on every device.
_BATCH_AXES = ('data', 'fsdp', 'tensor')


class BatchedFeatures:
  """`fn(variables, uint8 images) -> float32 features`, applied batch by batch over a mesh."""

  def __init__(self, fn: Callable[[Any, jax.Array], jax.Array], variables: Any, dim: int,
               batch_size: int = 50, mesh: Optional[Mesh] = None):
    """
    Args:
      fn: features of one batch; jitted here.
      variables: the weights `fn` takes, replicated onto every device of the mesh.
      dim: the feature width.
      batch_size: images per call, rounded up to a multiple of the mesh's device count.
      mesh: the devices to shard each batch over; default this process's devices in one axis
        (in a multi-process run each process measures its own images; the statistics merge).
    """
    self.mesh = mesh or partitioning.make_mesh(partitioning.MeshConfig(data=-1, fsdp=1),
                                               jax.local_devices())
    devices = self.mesh.devices.size
    self.batch_size = -(-batch_size // devices) * devices
    self.dim = dim
    replicated = NamedSharding(self.mesh, PartitionSpec())
    self._batch_sharding = NamedSharding(self.mesh, PartitionSpec(_BATCH_AXES))
    self._variables = jax.device_put(variables, replicated)
    self._fn = jax.jit(fn, in_shardings=(replicated, self._batch_sharding),
                       out_shardings=self._batch_sharding)

  def __call__(self, images: np.ndarray) -> np.ndarray:
    """float32 features [N, dim] of uint8 images [N, H, W, 3] (all of one size)."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
      raise ValueError(f'Expected uint8 images [N, H, W, 3], got {images.dtype} {images.shape}.')
    out = []
    for start in range(0, len(images), self.batch_size):
      batch = images[start:start + self.batch_size]
      count = len(batch)
      if count < self.batch_size:
        batch = np.concatenate([batch, np.zeros((self.batch_size - count,) + batch.shape[1:],
                                                batch.dtype)])
      features = self._fn(self._variables, jax.device_put(batch, self._batch_sharding))
      out.append(np.asarray(features, np.float32)[:count])
    return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)


def _inception_pool_features(variables, images):
  # pytorch-fid reads images with torchvision's ToTensor: float32 division by 255.
  return FIDInceptionV3().apply(variables, images.astype(jnp.float32) / 255.0)


def inception_features(weights: Optional[str] = None, batch_size: int = 50,
                       mesh: Optional[Mesh] = None) -> BatchedFeatures:
  """pytorch-fid's 2048-d Inception pool features of uint8 images of any size.

  Args:
    weights: pytorch-fid's .pth file or its safetensors conversion; None searches
      $CM3LEON_FID_INCEPTION and PyTorch's hub cache (``interop.pytorch_fid.find_weights``).
  """
  variables = pytorch_fid.load_fid_inception(weights)
  return BatchedFeatures(_inception_pool_features, variables, FEATURE_DIM, batch_size, mesh)
