"""A trained VQ-GAN as an image tokenizer: images <-> int32 codes, saved and loaded in one call.

Usage::

  tokenizer = ImageTokenizer(config, params)
  codes = tokenizer.encode(images)   # [B, H, W, 3] float in [-1, 1] (or uint8) -> int32 [B, h, w]
  images = tokenizer.decode(codes)   # -> float32 [B, H, W, 3], about [-1, 1]
  tokenizer.save('/tmp/tok')
  tokenizer = ImageTokenizer.load('/tmp/tok')

A checkpoint directory holds ``config.json`` (the VQGANConfig fields) and ``params/`` (an orbax
checkpoint of the parameter tree), so loading needs nothing but the directory.
"""

import dataclasses
import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from cm3leon_jax.models.vqgan import VQGAN, abstract_params
from cm3leon_jax.models.vqgan_config import VQGANConfig

CONFIG_FILE = 'config.json'
PARAMS_DIR = 'params'


class TokenizerCheckpointError(FileNotFoundError):
  """A directory that is missing or does not hold a saved ImageTokenizer."""


def to_model_range(images) -> jax.Array:
  """Images as float32 in [-1, 1]: uint8 [0, 255] is rescaled, floats are taken as they are."""
  images = jnp.asarray(images)
  if images.dtype == jnp.uint8:
    return images.astype(jnp.float32) / 127.5 - 1.0
  return images.astype(jnp.float32)


@functools.partial(jax.jit, static_argnums=0)
def _encode(model: VQGAN, params, images: jax.Array) -> jax.Array:
  return model.apply({'params': params}, images, method=VQGAN.encode_to_codes)


@functools.partial(jax.jit, static_argnums=0)
def _decode(model: VQGAN, params, codes: jax.Array) -> jax.Array:
  return model.apply({'params': params}, codes, method=VQGAN.decode_codes)


class ImageTokenizer:
  """A VQGANConfig plus its parameters, with jitted batched encode/decode and save/load."""

  def __init__(self, config: VQGANConfig, params):
    self.config = config
    self.params = params
    # The model is a frozen, hashable dataclass, so it is a static jit argument: one compile
    # per (config, batch shape), shared by every tokenizer with the same config.
    self.model = VQGAN(config)

  def encode(self, images) -> jax.Array:
    """Images [B, H, W, C] (float in [-1, 1] or uint8) -> int32 codes [B, h, w]."""
    images = to_model_range(images)
    self._check_images(images)
    return _encode(self.model, self.params, images)

  def decode(self, codes) -> jax.Array:
    """Int codes [B, h, w] -> float32 images [B, H, W, C] (about [-1, 1])."""
    codes = jnp.asarray(codes, jnp.int32)
    if codes.ndim != 3:
      raise ValueError(f'codes must be [batch, height, width], got shape {codes.shape}.')
    return _decode(self.model, self.params, codes)

  def _check_images(self, images: jax.Array) -> None:
    cfg = self.config
    if images.ndim != 4 or images.shape[-1] != cfg.in_channels:
      raise ValueError(f'images must be [batch, height, width, {cfg.in_channels}], got shape '
                       f'{images.shape}.')
    if images.shape[1] % cfg.downsample_factor or images.shape[2] % cfg.downsample_factor:
      raise ValueError(f'image sides {images.shape[1:3]} must be multiples of the downsampling '
                       f'factor {cfg.downsample_factor}.')

  def save(self, directory: str) -> str:
    """Write config.json and the orbax params checkpoint under `directory`; returns it."""
    directory = os.path.abspath(os.fspath(directory))
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, CONFIG_FILE), 'w', encoding='utf-8') as f:
      json.dump(dataclasses.asdict(self.config), f, indent=2)
    checkpointer = ocp.StandardCheckpointer()
    # Host copies: the saved file then never depends on how the params happened to be sharded.
    checkpointer.save(os.path.join(directory, PARAMS_DIR), jax.device_get(self.params), force=True)
    checkpointer.wait_until_finished()
    return directory

  @staticmethod
  def load_config(directory: str) -> VQGANConfig:
    """The VQGANConfig saved in `directory`, without loading the parameters.

    Raises:
      TokenizerCheckpointError: the directory is missing or lacks config.json or params/.
    """
    config_path, _ = _checkpoint_paths(directory)
    with open(config_path, encoding='utf-8') as f:
      return VQGANConfig(**json.load(f))

  @classmethod
  def load(cls, directory: str) -> 'ImageTokenizer':
    """The tokenizer saved by `save` in `directory`.

    Raises:
      TokenizerCheckpointError: the directory is missing or lacks config.json or params/.
    """
    config = cls.load_config(directory)
    _, params_path = _checkpoint_paths(directory)
    target = jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), abstract_params(config))
    params = ocp.StandardCheckpointer().restore(params_path, target)
    return cls(config, params)


def _checkpoint_paths(directory: str):
  """(config.json, params/) of a tokenizer checkpoint, checked to exist."""
  directory = os.path.abspath(os.fspath(directory))
  config_path = os.path.join(directory, CONFIG_FILE)
  params_path = os.path.join(directory, PARAMS_DIR)
  if not os.path.isdir(directory):
    raise TokenizerCheckpointError(f'Image tokenizer directory {directory} does not exist.')
  if not is_saved_image_tokenizer(directory):
    raise TokenizerCheckpointError(
        f'{directory} is not an image tokenizer checkpoint: expected {CONFIG_FILE} and '
        f'{PARAMS_DIR}/ written by ImageTokenizer.save.')
  return config_path, params_path


def is_saved_image_tokenizer(directory: str) -> bool:
  """Whether `directory` holds an image tokenizer written by ImageTokenizer.save."""
  return (os.path.isfile(os.path.join(directory, CONFIG_FILE)) and
          os.path.isdir(os.path.join(directory, PARAMS_DIR)))
