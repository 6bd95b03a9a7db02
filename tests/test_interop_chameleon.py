"""Chameleon checkpoints against transformers as the oracle: parity, round trips, error messages."""

import json
import logging

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file
from transformers import ChameleonConfig, ChameleonForConditionalGeneration

from cm3leon_jax import interop
from cm3leon_jax.interop import hf_chameleon
from cm3leon_jax.models.config import DecoderConfig
from cm3leon_jax.models.decoder import Decoder, init_params

VOCAB, BATCH, SEQ = 256, 2, 20
TOLERANCE = 1e-4
UP_PROJ = 'model.layers.1.mlp.up_proj.weight'


def hf_model(**changes) -> ChameleonForConditionalGeneration:
  """A tiny random Chameleon (4 heads sharing 2 KV heads, QK-norm) with non-trivial norms."""
  fields = dict(
      vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
      rms_norm_eps=1e-6, rope_parameters={'rope_type': 'default', 'rope_theta': 500.0},
      vq_config=hf_chameleon.PLACEHOLDER_VQ_CONFIG, vocabulary_map={},
      attn_implementation='eager')
  torch.manual_seed(0)
  model = ChameleonForConditionalGeneration(ChameleonConfig(**{**fields, **changes})).eval()
  with torch.no_grad():  # Norm weights away from 1 and biases away from 0, so mix-ups show.
    for name, p in model.named_parameters():
      if 'vqmodel' not in name:
        p.normal_(1.0 if 'norm.weight' in name or 'layernorm' in name else 0.0,
                  0.3 if 'norm' in name else 0.1)
  return model


def hf_logits(model, tokens) -> np.ndarray:
  """Logits before forward()'s image-token masking (which would set those columns to finfo.min)."""
  with torch.no_grad():
    hidden = model.model(input_ids=torch.tensor(tokens)).last_hidden_state
    return model.lm_head(hidden).numpy()


def our_logits(config, params, tokens) -> np.ndarray:
  return np.asarray(Decoder(config).apply({'params': params}, jnp.asarray(tokens)))


def random_tokens(seed=0):
  return np.random.default_rng(seed).integers(0, VOCAB, (BATCH, SEQ))


@pytest.mark.parametrize('swin_norm,scan_layers', [(False, False), (False, True), (True, True)])
def test_parity_with_transformers(tmp_path, swin_norm, scan_layers):
  model = hf_model(swin_norm=swin_norm)
  model.save_pretrained(tmp_path)
  config, params = interop.load_chameleon(str(tmp_path), dtype='float32', scan_layers=scan_layers)
  assert (config.num_kv_heads, config.qk_norm, config.swin_norm) == (2, True, swin_norm)
  assert (config.rope_theta, config.norm_eps) == (500.0, 1e-6)
  tokens = random_tokens()
  diff = np.abs(our_logits(config, params, tokens) - hf_logits(model, tokens)).max()
  print(f'chameleon swin_norm={swin_norm} scan_layers={scan_layers}: max |dlogit| = {diff:.2e}')
  assert diff <= TOLERANCE


def test_vq_tensors_are_ignored_and_logged(tmp_path, caplog):
  hf_model().save_pretrained(tmp_path)
  with caplog.at_level(logging.INFO):
    interop.load_chameleon(str(tmp_path), scan_layers=False)
  vq = sum(1 for name in load_file(tmp_path / 'model.safetensors') if 'vqmodel' in name)
  assert vq > 0 and f'ignored {vq} VQ' in caplog.text


def test_sharded_and_unprefixed_checkpoints_load_the_same(tmp_path):
  model = hf_model()
  model.save_pretrained(tmp_path / 'single')
  model.save_pretrained(tmp_path / 'sharded', max_shard_size='40KB')
  assert (tmp_path / 'sharded' / 'model.safetensors.index.json').exists()
  bare = tmp_path / 'bare'  # As a bare ChameleonModel would name them: no 'model.' prefix.
  bare.mkdir()
  (bare / 'config.json').write_text((tmp_path / 'single' / 'config.json').read_text())
  tensors = load_file(tmp_path / 'single' / 'model.safetensors')
  save_file({k.removeprefix('model.'): v for k, v in tensors.items()}, bare / 'model.safetensors')
  _, expected = interop.load_chameleon(str(tmp_path / 'single'))
  for directory in ('sharded', 'bare'):
    _, params = interop.load_chameleon(str(tmp_path / directory))
    jax.tree.map(np.testing.assert_array_equal, params, expected)


def our_random_params(config, seed=0):
  """Our init (still boxed, as save accepts), perturbed so norms and zero-initialised projections
  carry information too."""
  params = init_params(Decoder(config), jax.random.key(seed))
  leaves, treedef = jax.tree.flatten(params)
  rng = np.random.default_rng(seed)
  noisy = [np.asarray(x) + rng.normal(0, 0.1, x.shape).astype(x.dtype) for x in leaves]
  return jax.tree.unflatten(treedef, noisy)


@pytest.mark.parametrize('scan_layers', [True, False])
def test_round_trip_through_transformers(tmp_path, scan_layers):
  config = DecoderConfig(family='chameleon', vocab_size=VOCAB, num_layers=2, embed_dim=64,
                         num_heads=4, num_kv_heads=2, mlp_dim=96, max_length=64, qk_norm=True,
                         swin_norm=not scan_layers, rope_theta=2000.0, activation='silu',
                         dtype='float32',
                         scan_layers=scan_layers)
  boxed = our_random_params(config)
  interop.save_chameleon(str(tmp_path), config, boxed)
  params = nn.meta.unbox(boxed)
  model = ChameleonForConditionalGeneration.from_pretrained(
      tmp_path, attn_implementation='eager').eval()
  tokens = random_tokens(1)
  diff = np.abs(our_logits(config, params, tokens) - hf_logits(model, tokens)).max()
  print(f'chameleon round trip scan_layers={scan_layers}: max |dlogit| = {diff:.2e}')
  assert diff <= TOLERANCE
  loaded_config, loaded = interop.load_chameleon(str(tmp_path), config)
  assert loaded_config == config
  jax.tree.map(np.testing.assert_array_equal, loaded, params)
  assert hf_chameleon.config_from_hf(json.loads((tmp_path / 'config.json').read_text()),
                                     dtype='float32', scan_layers=scan_layers) == config


def rewrite(tmp_path, change):
  """Save a tiny model, then let `change` edit its tensor dict in place."""
  hf_model(num_hidden_layers=2).save_pretrained(tmp_path)
  tensors = load_file(tmp_path / 'model.safetensors')
  change(tensors)
  save_file(tensors, tmp_path / 'model.safetensors', metadata={'format': 'pt'})


def test_wrong_shape_names_the_tensor_and_both_shapes(tmp_path):
  rewrite(tmp_path, lambda t: t.update({UP_PROJ: t[UP_PROJ][:-1]}))
  with pytest.raises(interop.CheckpointMismatchError) as error:
    interop.load_chameleon(str(tmp_path))
  message = str(error.value)
  assert UP_PROJ in message and 'layers_1/mlp/up/kernel' in message
  assert 'expected shape (96, 64), found (95, 64)' in message


def test_missing_tensor_names_the_tensor_and_the_file(tmp_path):
  rewrite(tmp_path, lambda t: t.pop(UP_PROJ))
  with pytest.raises(interop.CheckpointMismatchError,
                     match=rf"missing tensor '{UP_PROJ}'.*model\.safetensors"):
    interop.load_chameleon(str(tmp_path))


def test_unexpected_tensor_is_listed(tmp_path):
  extra = {'model.layers.0.mlp.extra.weight': np.zeros(3, np.float32)}
  rewrite(tmp_path, lambda t: t.update(extra))
  with pytest.raises(interop.CheckpointMismatchError, match='model.layers.0.mlp.extra.weight'):
    interop.load_chameleon(str(tmp_path))


def test_unsupported_config_names_the_field():
  with pytest.raises(interop.UnsupportedConfigError, match='attention_bias'):
    hf_chameleon.config_from_hf({'attention_bias': True})


def test_bfloat16_checkpoints_load_and_save(tmp_path):
  model = hf_model(num_hidden_layers=2).to(torch.bfloat16)
  model.save_pretrained(tmp_path / 'hf')
  config, params = interop.load_chameleon(str(tmp_path / 'hf'), param_dtype='bfloat16')
  head = params['lm_head']['kernel']
  assert head.dtype == jnp.bfloat16
  np.testing.assert_array_equal(head.astype(np.float32),
                                model.lm_head.weight.detach().float().numpy().T)
  interop.save_chameleon(str(tmp_path / 'ours'), config, params)
  _, again = interop.load_chameleon(str(tmp_path / 'ours'), param_dtype='bfloat16')
  jax.tree.map(np.testing.assert_array_equal, again, params)
