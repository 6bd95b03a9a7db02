"""CLIP retriever against transformers' CLIPModel as the oracle: features, loader errors,
document embeddings, preprocessing and the offline text tokenizer."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.numpy import load_file, save_file
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import CLIPConfig as HFCLIPConfig
from transformers import CLIPModel, CLIPTokenizer
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from cm3leon_jax.interop.errors import CheckpointMismatchError
from cm3leon_jax.interop.hf_clip import ClipTextTokenizer, load_clip, preprocess_images
from cm3leon_jax.models.clip import CLIP, document_embedding
from cm3leon_jax.models.clip_config import CLIPConfig, from_hf_config_dict
from cm3leon_jax.models.config import ConfigError

TOLERANCE = 1e-4
VOCAB, EOS, PAD = 100, 99, 0
TEXT = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=16, eos_token_id=EOS, bos_token_id=98,
            pad_token_id=PAD)
VISION = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
              image_size=32, patch_size=8)


def hf_clip(text=None, vision=None) -> CLIPModel:
  """A tiny random CLIPModel with norms and biases away from 1 and 0, so mix-ups show."""
  config = HFCLIPConfig(text_config={**TEXT, **(text or {})},
                        vision_config={**VISION, **(vision or {})}, projection_dim=16)
  config._attn_implementation = 'eager'
  torch.manual_seed(0)
  model = CLIPModel(config).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if 'norm' in name and name.endswith('weight'):
        p.normal_(1.0, 0.3)
      elif name != 'logit_scale':
        p.normal_(0.0, 0.2)
  return model


@pytest.fixture(scope='module')
def saved(tmp_path_factory):
  path = tmp_path_factory.mktemp('clip')
  model = hf_clip()
  model.save_pretrained(path, safe_serialization=True)
  return model, str(path)


def text_batch(rng):
  """Four texts: full length, two right-padded with PAD after their end token, one left-padded."""
  ids = rng.integers(1, 98, (4, 12))
  mask = np.ones_like(ids)
  ids[0, -1] = EOS
  for row, length in ((1, 7), (2, 3)):
    ids[row, length - 1] = EOS
    ids[row, length:] = PAD
    mask[row, length:] = 0
  ids[3, :8], ids[3, -1], mask[3, :8] = PAD, EOS, 0
  return ids, mask


def test_features_match_transformers(saved):
  model, path = saved
  config, params = load_clip(path)
  assert config == CLIPConfig(
      image_size=32, patch_size=8, vision_hidden=32, vision_layers=2, vision_heads=4,
      vision_mlp=48, vocab_size=VOCAB, max_positions=16, text_hidden=32, text_layers=2,
      text_heads=4, text_mlp=48, eos_token_id=EOS, projection_dim=16)
  rng = np.random.default_rng(0)
  pixels = rng.normal(size=(2, 32, 32, 3)).astype(np.float32)
  ids, mask = text_batch(rng)
  with torch.no_grad():
    want_image = model.get_image_features(
        pixel_values=torch.tensor(pixels).permute(0, 3, 1, 2)).pooler_output.numpy()
    want_text = model.get_text_features(
        input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).pooler_output.numpy()
  clip = CLIP(config)
  image = clip.apply({'params': params}, pixels, method=CLIP.encode_image)
  text = clip.apply({'params': params}, ids, mask, method=CLIP.encode_text)
  image_diff = np.abs(np.asarray(image) - want_image).max()
  text_diff = np.abs(np.asarray(text) - want_text).max()
  print(f'max |diff|: image {image_diff:.2e}, text {text_diff:.2e}')
  assert image.shape == (2, 16) and text.shape == (4, 16)
  assert image_diff < TOLERANCE and text_diff < TOLERANCE


def test_legacy_eos_pools_at_the_largest_id(tmp_path):
  # eos_token_id 2 (early OpenAI configs) pools where the id is largest, not where 2 is.
  model = hf_clip(text=dict(eos_token_id=2, max_position_embeddings=8, hidden_act='gelu'),
                  vision=dict(hidden_act='gelu'))
  model.save_pretrained(tmp_path, safe_serialization=True)
  config, params = load_clip(str(tmp_path))
  assert config.eos_token_id == 2 and config.activation == 'gelu'
  ids = np.random.default_rng(1).integers(0, VOCAB, (2, 8))
  with torch.no_grad():
    want = model.get_text_features(input_ids=torch.tensor(ids)).pooler_output.numpy()
  got = CLIP(config).apply({'params': params}, ids, method=CLIP.encode_text)
  np.testing.assert_allclose(got, want, atol=TOLERANCE)


def test_wrong_shape_names_the_tensor(saved, tmp_path):
  _, path = saved
  tensors = load_file(f'{path}/model.safetensors')
  name = 'text_model.encoder.layers.1.mlp.fc1.weight'
  tensors[name] = tensors[name][:-1]
  save_file(tensors, str(tmp_path / 'model.safetensors'), metadata={'format': 'pt'})
  shutil.copy(f'{path}/config.json', tmp_path)
  with pytest.raises(CheckpointMismatchError, match=r"fc1\.weight.*expected shape \(48, 32\), "
                                                    r"found \(47, 32\)"):
    load_clip(str(tmp_path))
  del tensors[name]
  save_file(tensors, str(tmp_path / 'model.safetensors'), metadata={'format': 'pt'})
  with pytest.raises(CheckpointMismatchError, match=r"missing tensor 'text_model\.encoder\."
                                                    r"layers\.1\.mlp\.fc1\.weight'"):
    load_clip(str(tmp_path))


def test_missing_file(saved, tmp_path):
  _, path = saved
  shutil.copy(f'{path}/config.json', tmp_path)
  with pytest.raises(FileNotFoundError, match='model.safetensors'):
    load_clip(str(tmp_path))


def test_config_validation():
  with pytest.raises(ConfigError, match='image_size=30 must be a multiple of patch_size=8'):
    CLIPConfig(image_size=30, patch_size=8)
  with pytest.raises(ConfigError, match='activation'):
    CLIPConfig(activation='relu')
  with pytest.raises(ConfigError, match='must share hidden_act'):
    from_hf_config_dict({'text_config': {'hidden_act': 'gelu'}, 'vision_config': {}})
  assert from_hf_config_dict({}) == CLIPConfig()  # transformers' defaults are ViT-B/32.


def test_document_embedding():
  rng = np.random.default_rng(0)
  text, image = rng.normal(size=(2, 3, 8))
  unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
  np.testing.assert_allclose(document_embedding(text, image), (unit(text) + unit(image)) / 2,
                             atol=1e-6)
  np.testing.assert_allclose(document_embedding(text_emb=text), unit(text), atol=1e-6)
  np.testing.assert_allclose(document_embedding(image_emb=image), unit(image), atol=1e-6)
  with pytest.raises(ValueError, match='neither'):
    document_embedding()


def test_preprocessing_shape_and_range():
  config = CLIPConfig(image_size=32, patch_size=8)
  rng = np.random.default_rng(0)
  images = [rng.integers(0, 256, (40, 64, 3), dtype=np.uint8),
            Image.fromarray(rng.integers(0, 256, (50, 30), dtype=np.uint8)),  # Greyscale, tall.
            np.full((32, 32, 3), 255, np.uint8)]
  pixels = preprocess_images(images, config)
  assert pixels.shape == (3, 32, 32, 3) and pixels.dtype == np.float32
  lowest = (0 - np.array([0.48145466, 0.4578275, 0.40821073])) / np.array(
      [0.26862954, 0.26130258, 0.27577711])
  highest = (1 - np.array([0.48145466, 0.4578275, 0.40821073])) / np.array(
      [0.26862954, 0.26130258, 0.27577711])
  assert np.all(pixels >= lowest - 1e-5) and np.all(pixels <= highest + 1e-5)
  np.testing.assert_allclose(pixels[2], np.broadcast_to(highest, (32, 32, 3)), rtol=1e-5)


def test_preprocessing_matches_transformers_pil_processor():
  # transformers' PIL backend resizes as OpenAI's CLIP did (PIL bicubic on uint8 pixels).
  processor = CLIPImageProcessorPil(size={'shortest_edge': 32},
                                    crop_size={'height': 32, 'width': 32})
  rng = np.random.default_rng(1)
  images = [Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8))
            for shape in ((40, 64, 3), (51, 31, 3), (100, 77, 3))]
  want = np.concatenate([processor(images=[image], return_tensors='np')['pixel_values']
                         for image in images]).transpose(0, 2, 3, 1)
  got = preprocess_images(images, CLIPConfig(image_size=32, patch_size=8))
  np.testing.assert_allclose(got, want, atol=1e-6)


def write_tokenizer(directory, pad_token=None):
  """A tiny word-level tokenizer.json with CLIP's begin/end tokens around every text."""
  vocab = {'<|startoftext|>': 0, '<|endoftext|>': 1, '[UNK]': 2, '[PAD]': 3, 'a': 4, 'photo': 5,
           'of': 6, 'cat': 7}
  tokenizer = Tokenizer(models.WordLevel(vocab, unk_token='[UNK]'))
  tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
  tokenizer.post_processor = processors.TemplateProcessing(
      single='<|startoftext|> $A <|endoftext|>',
      special_tokens=[('<|startoftext|>', 0), ('<|endoftext|>', 1)])
  tokenizer.save(str(directory / 'tokenizer.json'))
  if pad_token:
    (directory / 'tokenizer_config.json').write_text(json.dumps({'pad_token': pad_token}))


def test_text_tokenizer_offline(tmp_path):
  write_tokenizer(tmp_path)
  ids, mask = ClipTextTokenizer(str(tmp_path), max_length=6)(['a photo of a cat', 'cat dog'])
  np.testing.assert_array_equal(ids, [[0, 4, 5, 6, 4, 1], [0, 7, 2, 1, 1, 1]])
  np.testing.assert_array_equal(mask, [[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
  # Truncation keeps the end token, which the text tower pools.
  ids, _ = ClipTextTokenizer(str(tmp_path), max_length=4)(['a photo of a cat'])
  np.testing.assert_array_equal(ids, [[0, 4, 5, 1]])


def test_text_tokenizer_reads_pad_token_and_length(saved, tmp_path):
  _, path = saved
  write_tokenizer(tmp_path, pad_token={'content': '[PAD]'})
  shutil.copy(f'{path}/config.json', tmp_path)
  tokenizer = ClipTextTokenizer(str(tmp_path))
  ids, mask = tokenizer(['cat'])
  assert tokenizer.max_length == 16 and ids.shape == (1, 16)
  np.testing.assert_array_equal(ids[0, :4], [0, 7, 1, 3])
  assert mask.sum() == 3
  with pytest.raises(FileNotFoundError, match='tokenizer.json'):
    ClipTextTokenizer(str(tmp_path / 'nowhere'))


def test_text_tokenizer_matches_transformers(tmp_path):
  # A tiny BPE vocabulary through transformers' CLIPTokenizer: its tokenizer.json carries CLIP's
  # lower-casing, '</w>' word ends, begin/end tokens and '<|endoftext|>' padding.
  letters = [chr(c) for c in range(ord('a'), ord('z') + 1)]
  merges = [('c', 'a'), ('ca', 't</w>'), ('p', 'h')]
  tokens = letters + [c + '</w>' for c in letters] + [a + b for a, b in merges]
  tokens += ['<|startoftext|>', '<|endoftext|>']
  oracle = CLIPTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=merges)
  oracle.save_pretrained(tmp_path)
  texts = ['a cat', 'Photo of a CAT!! with a caption too long to fit']
  want = oracle(texts, padding='max_length', truncation=True, max_length=10)
  ids, mask = ClipTextTokenizer(str(tmp_path), max_length=10)(texts)
  np.testing.assert_array_equal(ids, want['input_ids'])
  np.testing.assert_array_equal(mask, want['attention_mask'])


def test_jit_and_document_embedding_of_features(saved):
  _, path = saved
  config, params = load_clip(path)
  clip = CLIP(config)
  pixels = jnp.zeros((1, 32, 32, 3))
  image = jax.jit(lambda p, x: clip.apply({'params': p}, x, method=CLIP.encode_image))(params,
                                                                                      pixels)
  doc = document_embedding(image_emb=image)
  np.testing.assert_allclose(np.linalg.norm(doc, axis=-1), 1.0, rtol=1e-5)
