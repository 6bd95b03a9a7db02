"""transformers' CLIPModel checkpoints -> our CLIP, with CLIP's image preprocessing and an offline
text tokenizer (the `tokenizers` library on a local tokenizer.json).

Usage::

  config, params = load_clip('/path/to/clip-vit-base-patch32')   # a save_pretrained directory
  model = CLIP(config)
  image_emb = model.apply({'params': params}, preprocess_images(images, config),
                          method=CLIP.encode_image)
  ids, mask = ClipTextTokenizer('/path/to/clip-vit-base-patch32')(['a photo of a cat'])
  text_emb = model.apply({'params': params}, ids, mask, method=CLIP.encode_text)
"""

import json
import os
import re
from typing import Dict, Optional, Sequence, Tuple

import jax
import numpy as np
from flax import traverse_util
from PIL import Image
from tokenizers import Tokenizer

from cm3leon_jax.interop.checkpoint_files import CheckpointFiles, read_config
from cm3leon_jax.interop.errors import CheckpointMismatchError
from cm3leon_jax.models.clip import CLIP
from cm3leon_jax.models.clip_config import CLIPConfig, from_hf_config_dict

# OpenAI's normalisation statistics, which every released CLIP was trained with.
MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)

# Checkpoint tensors no parameter takes: the contrastive temperature, and the position-id
# buffers that older transformers versions saved.
_UNUSED = re.compile(r'(^logit_scale$|position_ids$)')


def expected_shapes(config: CLIPConfig) -> Dict[str, Tuple[int, ...]]:
  """Our parameter shapes by '/'-joined path (no arrays are allocated)."""
  size = config.image_size
  init = lambda rng: CLIP(config).init(rng, np.zeros((1, size, size, 3), np.float32),
                                       np.zeros((1, 1), np.int32))
  flat = traverse_util.flatten_dict(jax.eval_shape(init, jax.random.key(0))['params'], sep='/')
  return {path: tuple(x.shape) for path, x in flat.items()}


def hf_name(path: str) -> str:
  """The transformers tensor name of one of our parameter paths.

  Module names already match (see ``models.clip``); only the leaf names and the layer lists differ.
  """
  *modules, leaf = path.split('/')
  leaf = {'kernel': 'weight', 'scale': 'weight', 'embedding': 'weight'}.get(leaf, leaf)
  name = '.'.join(modules + [leaf])
  return re.sub(r'\blayers_(\d+)\b', r'layers.\1', name)


def _to_hf_shape(path: str, shape: Tuple[int, ...]) -> Tuple[int, ...]:
  if path.endswith('/kernel') and len(shape) == 4:  # Conv: our HWIO, torch's OIHW.
    return (shape[3], shape[2], shape[0], shape[1])
  if path.endswith('/kernel'):  # Linear: our (in, out), torch's (out, in).
    return shape[::-1]
  return shape


def _to_ours(path: str, x: np.ndarray) -> np.ndarray:
  if path.endswith('/kernel') and x.ndim == 4:
    return x.transpose(2, 3, 1, 0)
  if path.endswith('/kernel'):
    return x.T
  return x


def load_clip(directory: str) -> Tuple[CLIPConfig, dict]:
  """Load a directory written by transformers' CLIPModel.save_pretrained (config.json and
  model.safetensors, or a sharded index).

  Returns:
    (config, params): params is a plain tree of float32 numpy arrays for ``CLIP(config)``.

  Raises:
    FileNotFoundError: no config.json or no safetensors file in `directory`.
    CheckpointMismatchError: missing, misshapen or unexpected tensors; one message names each.
    ConfigError: a config.json that our CLIP cannot represent.
  """
  config = from_hf_config_dict(read_config(directory))
  files = CheckpointFiles(directory)
  shapes = expected_shapes(config)
  problems = []
  for path, shape in shapes.items():
    name, want = hf_name(path), _to_hf_shape(path, shape)
    if name not in files.shapes:
      problems.append(f'missing tensor {name!r} (for {path}) in {files.describe()}')
    elif files.shapes[name] != want:
      problems.append(f'{name!r} (for {path}): expected shape {want}, found {files.shapes[name]}')
  taken = {hf_name(path) for path in shapes}
  extra = sorted(n for n in files.names if n not in taken and not _UNUSED.search(n))
  if extra:
    problems.append(f'unexpected tensors that no parameter of this config takes: {extra}')
  if problems:
    raise CheckpointMismatchError(
        f'Checkpoint {directory} does not match its CLIP config:\n  ' + '\n  '.join(problems))
  flat = {path: _to_ours(path, files.read(hf_name(path))).astype(np.float32) for path in shapes}
  return config, traverse_util.unflatten_dict(flat, sep='/')


def _resize_and_crop(image: Image.Image, size: int) -> np.ndarray:
  width, height = image.size
  scale = size / min(width, height)
  # The short side becomes exactly `size`; the long side is truncated, as CLIP's processor does.
  new = (size, int(height * scale)) if width <= height else (int(width * scale), size)
  image = image.resize(new, Image.Resampling.BICUBIC)
  left, top = (new[0] - size) // 2, (new[1] - size) // 2
  return np.asarray(image.crop((left, top, left + size, top + size)))


def preprocess_images(images: Sequence, config: CLIPConfig) -> np.ndarray:
  """CLIP's preprocessing: float32 [B, image_size, image_size, 3] pixels for ``encode_image``.

  Each image (a PIL image or a uint8 array [H, W, 3] or [H, W]) is converted to RGB, resized so its
  shorter side is image_size (bicubic), centre-cropped to a square, scaled to [0, 1] and
  normalised with OpenAI's mean and std. This is transformers' CLIPImageProcessorPil exactly;
  its torchvision backend resizes in float and differs by up to one grey level.
  """
  out = []
  for image in images:
    if not isinstance(image, Image.Image):
      array = np.asarray(image)
      if array.dtype != np.uint8:
        raise ValueError(f'preprocess_images takes PIL images or uint8 arrays, got {array.dtype}.')
      image = Image.fromarray(array)
    pixels = _resize_and_crop(image.convert('RGB'), config.image_size)
    out.append((pixels.astype(np.float32) / 255.0 - MEAN) / STD)
  return np.stack(out)


class ClipTextTokenizer:
  """CLIP's text tokenizer, offline: the `tokenizers` library on a directory's tokenizer.json.

  transformers' CLIPTokenizer(Fast).save_pretrained writes tokenizer.json (with the begin/end of
  text post-processor). Texts are truncated (keeping the end token) and padded to `max_length`.
  """

  def __init__(self, directory: str, max_length: Optional[int] = None,
               pad_token: Optional[str] = None):
    """
    Args:
      directory: holds tokenizer.json (and optionally tokenizer_config.json, config.json).
      max_length: padded length; None takes config.json's max_position_embeddings if the
        directory has one, else CLIP's 77.
      pad_token: None takes tokenizer_config.json's pad_token, else CLIP's '<|endoftext|>'.
    """
    path = os.path.join(directory, 'tokenizer.json')
    if not os.path.exists(path):
      raise FileNotFoundError(
          f'{path} not found. Write it with transformers: '
          'CLIPTokenizerFast.from_pretrained(dir).save_pretrained(dir).')
    self.tokenizer = Tokenizer.from_file(path)
    self.max_length = max_length or self._config_max_length(directory)
    pad_token = pad_token or self._config_pad_token(directory)
    self.pad_id = self.tokenizer.token_to_id(pad_token)
    if self.pad_id is None:
      raise ValueError(f'Pad token {pad_token!r} is not in the vocabulary of {path}.')
    self.tokenizer.enable_truncation(self.max_length)
    self.tokenizer.enable_padding(length=self.max_length, pad_id=self.pad_id, pad_token=pad_token)

  @staticmethod
  def _config_max_length(directory: str) -> int:
    if os.path.exists(os.path.join(directory, 'config.json')):
      return from_hf_config_dict(read_config(directory)).max_positions
    return 77

  @staticmethod
  def _config_pad_token(directory: str) -> str:
    path = os.path.join(directory, 'tokenizer_config.json')
    pad = None
    if os.path.exists(path):
      with open(path) as f:
        pad = json.load(f).get('pad_token')
    if isinstance(pad, dict):  # AddedToken serialised.
      pad = pad.get('content')
    return pad or '<|endoftext|>'

  def __call__(self, texts: Sequence[str]) -> Tuple[np.ndarray, np.ndarray]:
    """int32 ids [len(texts), max_length] and their attention mask (1 for real tokens)."""
    encodings = self.tokenizer.encode_batch(list(texts))
    ids = np.array([e.ids for e in encodings], np.int32)
    mask = np.array([e.attention_mask for e in encodings], np.int32)
    return ids, mask
