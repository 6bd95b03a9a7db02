"""cm3leon_jax.data.images: loading every Pillow mode, EXIF, bad files, and preprocessing."""

import io

import numpy as np
import pytest
from PIL import Image

from cm3leon_jax.data.images import (ImageError, load_image, postprocess, preprocess,
                                     preprocess_batch)

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def _save(img, path, fmt='PNG', **kwargs):
  """Write `img` to `path` and return the path as a string."""
  img.save(path, fmt, **kwargs)
  return str(path)


def _pixel(img, xy=(0, 0)):
  """One pixel of an RGB image as a tuple."""
  assert img.mode == 'RGB'
  return img.getpixel(xy)


def _jpeg_bytes(size=(64, 64)):
  """A noisy JPEG, so that cutting it in half leaves real scan data missing."""
  noise = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
  buf = io.BytesIO()
  Image.fromarray(noise).save(buf, 'JPEG', quality=95)
  return buf.getvalue()


# ---------------------------------------------------------------- modes


def test_rgb_file_and_bytes_load_the_same(tmp_path):
  img = Image.new('RGB', (5, 4), (10, 20, 30))
  path = _save(img, tmp_path / 'a.png')
  with open(path, 'rb') as f:
    data = f.read()
  for source in (path, tmp_path / 'a.png', data):
    out = load_image(source)
    assert out.size == (5, 4) and _pixel(out) == (10, 20, 30)


def test_rgba_is_composited_on_white(tmp_path):
  img = Image.new('RGBA', (3, 2))
  img.putdata([(0, 0, 0, 0), (255, 0, 0, 255), (0, 0, 0, 128)] * 2)
  out = load_image(_save(img, tmp_path / 'rgba.png'))
  assert _pixel(out, (0, 0)) == WHITE  # Fully transparent black is white, not black.
  assert _pixel(out, (1, 0)) == RED
  half = _pixel(out, (2, 0))  # Black at alpha 128/255 over white.
  assert all(abs(c - 127) <= 1 for c in half)


def test_la_is_composited_on_white(tmp_path):
  img = Image.new('LA', (2, 2))
  img.putdata([(0, 0), (40, 255)] * 2)
  out = load_image(_save(img, tmp_path / 'la.png'))
  assert _pixel(out, (0, 0)) == WHITE
  assert _pixel(out, (1, 0)) == (40, 40, 40)


def test_palette_with_and_without_transparency(tmp_path):
  img = Image.new('P', (2, 2))
  img.putpalette([0, 0, 0, 10, 20, 30] + [0] * (256 * 3 - 6))
  img.putdata([0, 1] * 2)
  opaque = load_image(_save(img, tmp_path / 'p.png'))
  assert _pixel(opaque, (0, 0)) == (0, 0, 0) and _pixel(opaque, (1, 0)) == (10, 20, 30)
  transparent = load_image(_save(img, tmp_path / 'pt.png', transparency=0))
  assert _pixel(transparent, (0, 0)) == WHITE and _pixel(transparent, (1, 0)) == (10, 20, 30)


def test_grayscale_and_one_bit(tmp_path):
  gray = load_image(_save(Image.new('L', (3, 3), 77), tmp_path / 'l.png'))
  assert _pixel(gray) == (77, 77, 77)
  bits = Image.new('1', (3, 3), 0)
  bits.putpixel((1, 1), 1)
  out = load_image(_save(bits, tmp_path / 'one.png'))
  assert _pixel(out, (0, 0)) == (0, 0, 0) and _pixel(out, (1, 1)) == WHITE


def test_cmyk(tmp_path):
  img = Image.new('CMYK', (2, 2))
  img.putdata([(0, 0, 0, 0), (0, 255, 255, 0)] * 2)
  out = load_image(_save(img, tmp_path / 'cmyk.tif', 'TIFF'))
  assert _pixel(out, (0, 0)) == WHITE and _pixel(out, (1, 0)) == RED


@pytest.mark.parametrize('mode, fmt', [('I;16', 'PNG'), ('I;16B', 'TIFF'), ('I', 'TIFF')])
def test_sixteen_bit_is_scaled_not_clipped(tmp_path, mode, fmt):
  values = [0, 25700, 32768, 65535]  # 25700 = 100 * 257; 32768 * 255 / 65535 = 127.5 -> 128.
  img = Image.new(mode, (4, 2))
  img.putdata(values * 2)
  out = load_image(_save(img, tmp_path / f'sixteen.{fmt.lower()}', fmt))
  assert [_pixel(out, (x, 0))[0] for x in range(4)] == [0, 100, 128, 255]
  assert _pixel(out, (3, 1)) == WHITE


@pytest.mark.parametrize('orientation, top_colour', [(6, RED), (8, BLUE)])
def test_exif_orientation_is_applied(tmp_path, orientation, top_colour):
  img = Image.new('RGB', (40, 20), BLUE)
  img.paste(RED, (0, 0, 20, 20))  # Left half red, right half blue.
  exif = Image.Exif()
  exif[0x0112] = orientation
  out = load_image(_save(img, tmp_path / 'rot.png', exif=exif))
  assert out.size == (20, 40)  # Width and height swapped.
  # 6 = rotate 90 degrees clockwise to display (left goes up); 8 = counter-clockwise.
  assert _pixel(out, (10, 5)) == top_colour


# ---------------------------------------------------------------- preprocess / postprocess


def test_preprocess_shape_dtype_range():
  noise = np.random.default_rng(1).integers(0, 256, (30, 50, 3), dtype=np.uint8)
  out = preprocess(Image.fromarray(noise), 16)
  assert out.shape == (16, 16, 3) and out.dtype == np.float32
  assert out.min() >= -1.0 and out.max() <= 1.0
  assert out.min() < -0.5 and out.max() > 0.5  # Not collapsed to a constant.


def test_preprocess_resizes_short_side_then_centre_crops():
  # 64x32 -> resize to 32x16 -> crop columns [8, 24), i.e. source columns [16, 48).
  # Source: blue [0, 16), green [16, 24), red [24, 64). Expected output: green at columns 0-3,
  # red from column 4 on, and no blue. Squashing to 16x16 would show blue on the left; cropping
  # without resizing (source columns [24, 40)) would show no green.
  img = Image.new('RGB', (64, 32), RED)
  img.paste(BLUE, (0, 0, 16, 32))
  img.paste(GREEN, (16, 0, 24, 32))
  out = postprocess(preprocess(img, 16))
  assert out.shape == (16, 16, 3)
  assert np.all(np.argmax(out[:, 1], axis=-1) == 1)  # Green.
  assert np.all(np.argmax(out[:, 6:], axis=-1) == 0)  # Red.
  np.testing.assert_allclose(out[:, 8:], np.broadcast_to(RED, (16, 8, 3)), atol=2)
  assert np.all(np.argmax(out, axis=-1) != 2)  # The cropped-off blue never shows.


def test_preprocess_tall_image_crops_vertically():
  img = Image.new('RGB', (20, 80), BLUE)
  img.paste(RED, (0, 20, 20, 60))  # Centre half red; the short-side resize keeps 20 of 80 rows.
  out = postprocess(preprocess(img, 10))
  assert out.shape == (10, 10, 3)
  np.testing.assert_allclose(out, np.broadcast_to(RED, (10, 10, 3)), atol=2)


@pytest.mark.parametrize('colour', [(0, 0, 0), (255, 255, 255), (12, 128, 201)])
def test_postprocess_inverts_preprocess_on_flat_colour(colour):
  img = Image.new('RGB', (37, 23), colour)
  out = postprocess(preprocess(img, 16))
  assert out.dtype == np.uint8
  np.testing.assert_array_equal(out, np.broadcast_to(np.uint8(colour), (16, 16, 3)))


def test_postprocess_clips():
  out = postprocess(np.array([[[-3.0, 0.0, 3.0]]], np.float32))
  np.testing.assert_array_equal(out, [[[0, 128, 255]]])


# ---------------------------------------------------------------- bad input


def _bad_files(tmp_path):
  """Paths of: truncated JPEG, zero-byte file, text renamed .png, 1x1 image."""
  truncated = tmp_path / 'truncated.jpg'
  data = _jpeg_bytes()
  truncated.write_bytes(data[:len(data) // 2])
  empty = tmp_path / 'empty.png'
  empty.write_bytes(b'')
  text = tmp_path / 'text.png'
  text.write_text('this is not an image\n')
  tiny = _save(Image.new('RGB', (1, 1), RED), tmp_path / 'tiny.png')
  return [str(truncated), str(empty), str(text), tiny]


def test_each_bad_file_raises_image_error_naming_it(tmp_path):
  problems = ['truncated', 'empty file', 'not an image', '1x1, smaller than the minimum side 2']
  for path, problem in zip(_bad_files(tmp_path), problems):
    with pytest.raises(ImageError) as info:
      load_image(path)
    assert str(info.value).startswith(path + ': ') and problem in str(info.value)


def test_bad_bytes_and_missing_file(tmp_path):
  with pytest.raises(ImageError, match='<bytes>: not an image'):
    load_image(b'not an image')
  with pytest.raises(ImageError, match='<bytes>: empty file'):
    load_image(b'')
  missing = str(tmp_path / 'missing.png')
  with pytest.raises(ImageError, match='missing.png: no such file'):
    load_image(missing)


def test_min_side_is_configurable(tmp_path):
  path = _save(Image.new('RGB', (3, 5), RED), tmp_path / 'small.png')
  assert load_image(path).size == (3, 5)
  with pytest.raises(ImageError, match='3x5, smaller than the minimum side 4'):
    load_image(path, min_side=4)


def test_preprocess_batch_skips_bad_records(tmp_path):
  good = [_save(Image.new('RGB', (8, 6), c), tmp_path / f'good{i}.png')
          for i, c in enumerate((RED, GREEN))]
  bad = _bad_files(tmp_path)
  sources = [good[0], *bad, good[1], b'garbage']
  batch, kept, errors = preprocess_batch(sources, 4, on_error='skip')
  assert batch.shape == (2, 4, 4, 3) and batch.dtype == np.float32
  assert kept == [0, 5]
  assert [i for i, _ in errors] == [1, 2, 3, 4, 6]
  for (_, message), name in zip(errors, [*bad, '<bytes>']):
    assert name in message
  np.testing.assert_array_equal(postprocess(batch[1]), np.broadcast_to(np.uint8(GREEN), (4, 4, 3)))


def test_preprocess_batch_raise_mode_and_empty(tmp_path):
  with pytest.raises(ImageError):
    preprocess_batch([b'garbage'], 4)
  with pytest.raises(ValueError, match='on_error'):
    preprocess_batch([], 4, on_error='ignore')
  batch, kept, errors = preprocess_batch([b'garbage'], 4, on_error='skip')
  assert batch.shape == (0, 4, 4, 3) and kept == [] and len(errors) == 1
