"""Tests of the ImageTokenizer (encode/decode, save/load) and tools/train_image_tokenizer.py."""

import json

import jax
import numpy as np
import pytest

from cm3leon_jax.tokenizers.image import ImageTokenizer, TokenizerCheckpointError
from cm3leon_jax.models.vqgan import VQGAN
from cm3leon_jax.models.vqgan_config import VQGANConfig

from cm3leon_jax.cli import train_image_tokenizer as tool

# Smaller than gin/vqgan/tiny.gin so that compiling stays quick; same 8x8 code grid at 32 px.
CONFIG = VQGANConfig(resolution=32, ch=32, ch_mult=(1, 1, 1, 1), num_res_blocks=1, z_channels=32,
                     embed_dim=8, n_embed=64)


@pytest.fixture(scope='module')
def tokenizer():
  images = np.zeros((1, 32, 32, 3), np.float32)
  params = jax.jit(VQGAN(CONFIG).init)(jax.random.key(0), images)['params']
  return ImageTokenizer(CONFIG, params)


def _images(count=2):
  return np.random.default_rng(0).integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)


def test_encode_decode_shapes_and_dtypes(tokenizer):
  codes = tokenizer.encode(_images(2))
  assert codes.shape == (2, 4, 4) and codes.dtype == np.int32
  decoded = tokenizer.decode(codes)
  assert decoded.shape == (2, 32, 32, 3) and decoded.dtype == np.float32


def test_uint8_and_float_inputs_give_the_same_codes(tokenizer):
  images = _images(2)
  floats = images.astype(np.float32) / 127.5 - 1.0
  np.testing.assert_array_equal(tokenizer.encode(images), tokenizer.encode(floats))


def test_save_load_round_trip_gives_identical_codes(tokenizer, tmp_path):
  images = _images(3)
  tokenizer.save(tmp_path / 'tok')
  loaded = ImageTokenizer.load(tmp_path / 'tok')
  assert loaded.config == CONFIG
  np.testing.assert_array_equal(loaded.encode(images), tokenizer.encode(images))


def test_load_names_a_missing_or_wrong_directory(tmp_path):
  with pytest.raises(TokenizerCheckpointError, match='does not exist'):
    ImageTokenizer.load(tmp_path / 'nowhere')
  (tmp_path / 'other').mkdir()
  with pytest.raises(TokenizerCheckpointError, match='not an image tokenizer checkpoint'):
    ImageTokenizer.load(tmp_path / 'other')


def test_dead_code_reset_changes_exactly_the_unused_codes():
  rng = np.random.default_rng(0)
  codebook = rng.normal(size=(6, 4)).astype(np.float32)
  used = np.array([True, False, True, False, False, True])
  candidates = rng.normal(size=(10, 4)).astype(np.float32) + 100.0
  new = tool.reset_dead_codes(codebook, used, candidates, rng)
  np.testing.assert_array_equal(new[used], codebook[used])
  for row in new[~used]:
    assert any(np.array_equal(row, c) for c in candidates)
  assert not np.shares_memory(new, codebook)


def test_code_statistics():
  usage, perplexity = tool.code_statistics(np.array([5, 5, 0, 0]))
  assert usage == 0.5 and perplexity == pytest.approx(2.0)


def test_folder_pool_skips_and_counts_a_corrupt_file(tmp_path):
  from PIL import Image
  Image.fromarray(_images(1)[0]).save(tmp_path / 'good.png')
  (tmp_path / 'bad.jpg').write_bytes(b'not an image at all')
  pool, skipped = tool.folder_pool(str(tmp_path), 32)
  assert pool.shape == (1, 32, 32, 3) and pool.dtype == np.uint8
  assert len(skipped) == 1 and skipped[0][0].endswith('bad.jpg')


@pytest.mark.slow
def test_tool_runs_end_to_end(tmp_path):
  out = tmp_path / 'run'
  metrics = tool.train(CONFIG, str(out), steps=20, batch_size=8, learning_rate=1e-3,
                       pool_size=64, dead_code_every=5, log_every=10, eval_examples=20)
  with open(out / 'metrics.json', encoding='utf-8') as f:
    written = json.load(f)
  assert written == pytest.approx(metrics)
  for key in ('psnr', 'codebook_usage', 'perplexity', 'judge_agreement'):
    assert np.isfinite(written[key])
  loaded = ImageTokenizer.load(out / 'tokenizer')
  assert loaded.encode(_images(1)).shape == (1, 4, 4)


@pytest.mark.slow
def test_tool_trains_on_a_folder_and_reports_skipped_files(tmp_path):
  from PIL import Image
  for i, image in enumerate(_images(4)):
    Image.fromarray(image).save(tmp_path / f'{i}.png')
  (tmp_path / 'broken.png').write_bytes(b'\x89PNG truncated')
  metrics = tool.train(CONFIG, str(tmp_path / 'run'), steps=4, batch_size=2, learning_rate=1e-3,
                       source='folder', image_folder=str(tmp_path), log_every=2,
                       eval_examples=4, disc_weight=0.1, disc_start=2)
  assert metrics['skipped_files'] == 1 and metrics['training_images'] == 4
