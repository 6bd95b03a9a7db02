"""Loading any user image and turning it into model input, following Chameleon's image recipe.

``load_image`` opens a file (or bytes) with Pillow, applies the EXIF orientation, decodes it fully
and converts every mode to 8-bit RGB:

* transparency (RGBA, LA, PA, or P/L/RGB with a ``transparency`` entry) is alpha-composited on
  white, as Chameleon does, so transparent pixels become white rather than whatever colour the
  encoder left under them;
* 16-bit grayscale ('I;16*') and 32-bit integer ('I') images are read as the 16-bit range
  [0, 65535] and mapped linearly to [0, 255] (``round(v * 255 / 65535)``, values outside the 16-bit
  range clipped first). Pillow's own ``convert`` clips at 255 instead, which turns almost every
  16-bit image white. The mapping is fixed, not stretched per image, so a dark image stays dark;
* every other mode (L, P, CMYK, 1, YCbCr, F, ...) goes through Pillow's ``convert('RGB')``.

Any problem with a record (missing file, empty or truncated file, not an image, too small) raises
one error type, ``ImageError``, whose message starts with the file name (or ``<bytes>``).

``preprocess`` resizes the short side to ``size`` with LANCZOS, centre-crops to ``size x size`` and
scales pixels to [-1, 1]; ``postprocess`` maps back to uint8.
"""

import io
import os
from typing import List, Sequence, Tuple, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

ImageSource = Union[str, os.PathLike, bytes, bytearray, memoryview]

DEFAULT_MIN_SIDE = 2
_SIXTEEN_BIT_MODES = ('I;16', 'I;16L', 'I;16B', 'I;16N', 'I')
_ALPHA_MODES = ('RGBA', 'LA', 'PA', 'RGBa', 'La')
_WHITE = (255, 255, 255, 255)


class ImageError(ValueError):
  """A record that cannot become an RGB image; the message names the file and the problem."""


def _source_name(source: ImageSource) -> str:
  """The name used in error messages: the path, or '<bytes>' for in-memory data."""
  if isinstance(source, (bytes, bytearray, memoryview)):
    return '<bytes>'
  return os.fspath(source) if isinstance(source, os.PathLike) else str(source)


def _open_and_decode(source: ImageSource) -> Image.Image:
  """Open `source`, decode every pixel and apply the EXIF orientation.

  Decoding happens inside the ``with`` block so the file handle is closed on return and a
  truncated or corrupt stream fails here, not later inside a training step.
  """
  if isinstance(source, (bytes, bytearray, memoryview)):
    fp = io.BytesIO(bytes(source))
  else:
    fp = source
  with Image.open(fp) as img:
    img.load()
    # exif_transpose returns a new (already loaded) image, or a copy when there is no orientation.
    return ImageOps.exif_transpose(img)


def _sixteen_bit_to_l(img: Image.Image) -> Image.Image:
  """Map a 16-bit (or 32-bit integer) grayscale image linearly from [0, 65535] to 8-bit 'L'."""
  values = np.asarray(img).astype(np.float64)
  values = np.clip(values, 0, 65535) * (255.0 / 65535.0)
  return Image.fromarray(np.round(values).astype(np.uint8), mode='L')


def _has_transparency(img: Image.Image) -> bool:
  """Whether `img` carries an alpha channel or a transparent colour / palette entry."""
  return img.mode in _ALPHA_MODES or 'transparency' in img.info


def to_rgb(img: Image.Image) -> Image.Image:
  """Convert an image of any Pillow mode to 8-bit RGB (transparency composited on white)."""
  if img.mode in _SIXTEEN_BIT_MODES:
    img = _sixteen_bit_to_l(img)
  if _has_transparency(img):
    # Compositing (rather than dropping alpha) is what a viewer shows on a white page.
    rgba = img.convert('RGBA')
    white = Image.new('RGBA', rgba.size, _WHITE)
    return Image.alpha_composite(white, rgba).convert('RGB')
  return img if img.mode == 'RGB' else img.convert('RGB')


def _check_not_missing_or_empty(source: ImageSource, name: str) -> None:
  """Raise ImageError for a missing path or zero-length data (plainer messages than Pillow's)."""
  if isinstance(source, (bytes, bytearray, memoryview)):
    empty = len(source) == 0
  elif not os.path.exists(source):
    raise ImageError(f'{name}: no such file')
  else:
    empty = os.path.isfile(source) and os.path.getsize(source) == 0
  if empty:
    raise ImageError(f'{name}: empty file (0 bytes)')


def load_image(source: ImageSource, min_side: int = DEFAULT_MIN_SIDE) -> Image.Image:
  """Load a file path or encoded bytes as an EXIF-oriented, fully decoded RGB Pillow image.

  Args:
    source: a path (str or os.PathLike) or the encoded file's bytes.
    min_side: images with a width or height below this are rejected.

  Raises:
    ImageError: the file is missing, empty, truncated, not an image, or smaller than `min_side`;
      the message starts with the path (or '<bytes>').
  """
  name = _source_name(source)
  _check_not_missing_or_empty(source, name)
  try:
    img = _open_and_decode(source)
    rgb = to_rgb(img)
  except MemoryError:
    raise
  except UnidentifiedImageError as e:
    raise ImageError(f'{name}: not an image file Pillow recognises') from e
  except Exception as e:  # pylint: disable=broad-except
    # Pillow's decoders raise many types on corrupt data (OSError, SyntaxError, struct.error,
    # DecompressionBombError, ...); callers should only have to handle one.
    raise ImageError(f'{name}: cannot decode image ({type(e).__name__}: {e})') from e
  width, height = rgb.size
  if min(width, height) < min_side:
    raise ImageError(f'{name}: image is {width}x{height}, smaller than the minimum side {min_side}')
  return rgb


def load_array(pixels: np.ndarray, min_side: int = DEFAULT_MIN_SIDE) -> Image.Image:
  """Decoded uint8 pixels ([H, W], [H, W, 1], [H, W, 3] or RGBA [H, W, 4]) as an RGB Pillow image.

  Raises:
    ImageError: the array is not uint8 pixels of one of those shapes, or is smaller than `min_side`.
  """
  pixels = np.asarray(pixels)
  if pixels.ndim == 3 and pixels.shape[-1] == 1:
    pixels = pixels[..., 0]
  if pixels.dtype != np.uint8 or not (pixels.ndim == 2 or pixels.shape[-1] in (3, 4)):
    raise ImageError(f'<array>: expected uint8 pixels [H, W] or [H, W, 1|3|4], got {pixels.dtype} '
                     f'{pixels.shape}')
  height, width = pixels.shape[:2]
  if min(width, height) < min_side:
    raise ImageError(f'<array>: image is {width}x{height}, smaller than the minimum side {min_side}')
  return to_rgb(Image.fromarray(pixels))


def _resize_short_side(img: Image.Image, size: int) -> Image.Image:
  """Resize so the shorter side is `size`, keeping the aspect ratio (LANCZOS)."""
  width, height = img.size
  scale = size / min(width, height)
  new_size = (max(size, round(width * scale)), max(size, round(height * scale)))
  if new_size == img.size:
    return img  # Resampling at scale 1 would only add rounding.
  return img.resize(new_size, Image.Resampling.LANCZOS)


def _centre_crop(img: Image.Image, size: int) -> Image.Image:
  """Crop the central `size` x `size` square."""
  width, height = img.size
  left, top = (width - size) // 2, (height - size) // 2
  return img.crop((left, top, left + size, top + size))


def preprocess(image: Image.Image, size: int) -> np.ndarray:
  """Resize the short side to `size` (LANCZOS), centre-crop, and scale to float32 in [-1, 1].

  Returns:
    float32 array of shape [size, size, 3].
  """
  if size < 1:
    raise ValueError(f'size must be positive, got {size}')
  image = to_rgb(image)
  square = _centre_crop(_resize_short_side(image, size), size)
  pixels = np.asarray(square, dtype=np.float32)
  return pixels / 127.5 - 1.0


def box_after_preprocess(box, width: int, height: int, size: int) -> Tuple[float, ...]:
  """Where a box (x0, y0, x1, y1) in pixels of a `width` x `height` image lies after `preprocess`
  to `size`: scaled with the short side, shifted by the centre crop and clipped to the square."""
  scale = size / min(width, height)
  new_width, new_height = max(size, round(width * scale)), max(size, round(height * scale))
  left, top = (new_width - size) // 2, (new_height - size) // 2
  sx, sy = new_width / width, new_height / height
  x0, y0, x1, y1 = box
  clip = lambda v: min(max(v, 0.0), float(size))
  return (clip(x0 * sx - left), clip(y0 * sy - top), clip(x1 * sx - left), clip(y1 * sy - top))


def postprocess(array: np.ndarray) -> np.ndarray:
  """Map [-1, 1] floats back to uint8 pixels in [0, 255] (clipped, rounded); the inverse of scaling.

  Args:
    array: floats of shape [..., H, W, 3].
  """
  array = np.asarray(array, dtype=np.float32)
  if array.shape[-1] != 3:
    raise ValueError(f'expected a trailing channel axis of 3, got shape {array.shape}')
  return np.clip(np.round((array + 1.0) * 127.5), 0, 255).astype(np.uint8)


def preprocess_batch(
    sources: Sequence[ImageSource],
    size: int,
    on_error: str = 'raise',
    min_side: int = DEFAULT_MIN_SIDE,
) -> Tuple[np.ndarray, List[int], List[Tuple[int, str]]]:
  """Load and preprocess many images, either failing on the first bad one or skipping bad ones.

  Args:
    sources: paths and/or encoded bytes.
    size: output side length.
    on_error: 'raise' re-raises the first ImageError; 'skip' records it and carries on.
    min_side: passed to `load_image`.

  Returns:
    (images [N, size, size, 3] float32, indices into `sources` of the N kept records,
    errors as (index, message) pairs for the skipped ones).
  """
  if on_error not in ('raise', 'skip'):
    raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
  arrays, kept, errors = [], [], []
  for index, source in enumerate(sources):
    try:
      arrays.append(preprocess(load_image(source, min_side=min_side), size))
    except ImageError as e:
      if on_error == 'raise':
        raise
      errors.append((index, str(e)))
      continue
    kept.append(index)
  batch = np.stack(arrays) if arrays else np.zeros((0, size, size, 3), np.float32)
  return batch, kept, errors
