"""Decoder behaviour: KV-cache decoding, packing, layer-stack options, dtypes and bad configs."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cm3leon_jax.models.config import ConfigError, DecoderConfig
from cm3leon_jax.models.decoder import init_cache
from helpers import model_and_params, random_tokens, tiny_config

FAMILIES = [
    pytest.param(dict(family='cm3leon'), id='cm3leon'),
    pytest.param(dict(family='chameleon'), id='chameleon-gqa-qknorm'),
    pytest.param(dict(family='chameleon', swin_norm=True), id='chameleon-swin'),
]


def decode_in_steps(model, params, tokens, prompt_length, cache_length):
  """Prefill `prompt_length` tokens, then feed the rest one at a time; concatenated logits."""
  cache = init_cache(model, tokens.shape[0], cache_length)
  step = jax.jit(lambda p, c, t: model.apply({'params': p, 'cache': c}, t, decode=True,
                                              mutable=['cache']))
  logits, state = step(params, cache, tokens[:, :prompt_length])
  outputs = [logits]
  for t in range(prompt_length, tokens.shape[1]):
    logits, state = step(params, state['cache'], tokens[:, t:t + 1])
    outputs.append(logits)
  return jnp.concatenate(outputs, axis=1)


@pytest.mark.parametrize('overrides', FAMILIES)
@pytest.mark.parametrize('scan_layers', [True, False])
def test_prefill_then_steps_equals_full_forward(overrides, scan_layers):
  config = tiny_config(scan_layers=scan_layers, **overrides)
  model, params = model_and_params(config)
  tokens = random_tokens((2, 20), config.vocab_size)
  full = model.apply({'params': params}, tokens)
  stepped = decode_in_steps(model, params, tokens, prompt_length=7, cache_length=32)
  np.testing.assert_allclose(stepped, full, atol=1e-5, rtol=0)


@pytest.mark.parametrize('overrides', FAMILIES)
def test_packed_segments_equal_separate_sequences(overrides):
  config = tiny_config(**overrides)
  model, params = model_and_params(config)
  first, second = random_tokens((1, 9), 256, seed=2), random_tokens((1, 7), 256, seed=3)
  packed = jnp.concatenate([first, second], axis=1)
  segments = jnp.array([[1] * 9 + [2] * 7])
  positions = jnp.array([list(range(9)) + list(range(7))])
  logits = model.apply({'params': params}, packed, positions=positions, segment_ids=segments)
  np.testing.assert_allclose(logits[:, :9], model.apply({'params': params}, first), atol=1e-5)
  np.testing.assert_allclose(logits[:, 9:], model.apply({'params': params}, second), atol=1e-5)


def test_later_tokens_do_not_change_earlier_logits():
  config = tiny_config()
  model, params = model_and_params(config)
  tokens = random_tokens((1, 12), config.vocab_size)
  changed = tokens.at[0, 8].set((tokens[0, 8] + 1) % config.vocab_size)
  a = model.apply({'params': params}, tokens)
  b = model.apply({'params': params}, changed)
  np.testing.assert_allclose(a[:, :8], b[:, :8], atol=1e-6)
  assert np.abs(np.asarray(a[:, 8:] - b[:, 8:])).max() > 1e-4


def _gradients(config):
  model, params = model_and_params(config)
  tokens = random_tokens((2, 12), 256)
  return jax.jit(jax.grad(lambda p: model.apply({'params': p}, tokens).mean()))(params)


@pytest.fixture(scope='module')
def gradients_without_remat():
  return _gradients(tiny_config(family='chameleon'))


@pytest.mark.parametrize('policy', ['full', 'minimal', 'save_qkv_proj', 'save_out_proj',
                                    'save_dot_except_mlp', 'save_dot_except_mlpwi'])
def test_remat_policies_give_the_same_gradients(policy, gradients_without_remat):
  reference = gradients_without_remat
  rematted = _gradients(tiny_config(family='chameleon', remat_policy=policy))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), reference, rematted)


QKV = {'query_proj', 'key_proj', 'value_proj'}
# The named activations each policy keeps, as MaxText's names mean (swin_norm: the MLP output feeds a
# norm inside the block, so keeping it is a real choice).
KEPT_NAMES = {'full': set(), 'minimal': set(), 'save_qkv_proj': QKV, 'save_out_proj': {'out_proj'},
              'save_dot_except_mlp': QKV | {'out_proj'},
              'save_dot_except_mlpwi': QKV | {'out_proj', 'mlpwo'}}


@pytest.mark.parametrize('policy', sorted(KEPT_NAMES))
def test_remat_policies_keep_the_activations_their_names_say(policy, capsys):
  config = tiny_config(family='chameleon', swin_norm=True, remat_policy=policy, num_layers=1,
                       scan_layers=False)
  model, params = model_and_params(config)
  tokens = random_tokens((2, 12), 256)
  capsys.readouterr()
  jax.ad_checkpoint.print_saved_residuals(lambda p: model.apply({'params': p}, tokens).mean(),
                                          params)
  kept = set(re.findall(r"named '(\w+)'", capsys.readouterr().out))
  assert kept == KEPT_NAMES[policy]


def test_scan_and_unrolled_stacks_compute_the_same_function():
  scanned_model, scanned = model_and_params(tiny_config(scan_layers=True))
  unrolled_model, _ = model_and_params(tiny_config(scan_layers=False))
  unrolled = {k: v for k, v in scanned.items() if k != 'layers'}
  for i in range(2):
    unrolled[f'layers_{i}'] = jax.tree.map(lambda x, i=i: x[i], scanned['layers'])
  tokens = random_tokens((2, 10), 256)
  np.testing.assert_allclose(unrolled_model.apply({'params': unrolled}, tokens),
                             scanned_model.apply({'params': scanned}, tokens), atol=1e-6)


def test_bf16_compute_keeps_fp32_master_weights():
  config = tiny_config(dtype='bfloat16', param_dtype='float32')
  model, params = model_and_params(config)
  assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype('float32')}
  logits = model.apply({'params': params}, random_tokens((2, 10), 256))
  assert logits.dtype == jnp.float32
  reference = model_and_params(config.replace(dtype='float32'))[0].apply({'params': params},
                                                                         random_tokens((2, 10), 256))
  # bf16 has 8 mantissa bits: close to fp32, but not equal.
  assert 0 < float(jnp.abs(logits - reference).max()) < 0.05


@pytest.mark.parametrize('overrides, message', [
    (dict(embed_dim=64, num_heads=5), 'num_heads=5 does not divide embed_dim=64'),
    (dict(family='gpt'), "family='gpt' is unknown"),
    (dict(num_layers=-2), 'num_layers must be a positive integer, got -2'),
    (dict(vocab_size=0), 'vocab_size must be a positive integer'),
    (dict(num_heads=4, num_kv_heads=3), 'num_kv_heads=3 must divide num_heads=4'),
    (dict(remat_policy='sometimes'), "remat_policy='sometimes' is unknown; choose one of"),
    (dict(remat_policy='save_qkv_and_out_proj'), "is now called 'save_dot_except_mlpwi'"),
    (dict(dtype='float8'), "dtype='float8' is unknown"),
    (dict(init_std=-0.1), 'init_std must be > 0'),
])
def test_bad_config_fails_at_build_time_with_one_message(overrides, message):
  with pytest.raises(ConfigError, match=message.replace('(', r'\(').replace(')', r'\)')):
    DecoderConfig(**{**dict(embed_dim=64, num_heads=4), **overrides})


def test_too_long_sequence_is_refused_and_bad_token_ids_are_visible():
  config = tiny_config(max_length=16)
  model, params = model_and_params(config)
  with pytest.raises(ValueError, match='Sequence length 17 exceeds max_length=16'):
    model.apply({'params': params}, jnp.zeros((1, 17), jnp.int32))
  logits = model.apply({'params': params}, jnp.array([[1, 2, 3], [1, 2, config.vocab_size + 3]]))
  # The bad id poisons its sequence (NaN reaches the loss and the trainer's guard), not others.
  assert np.isfinite(logits[0]).all() and np.isnan(logits[1, 2]).all()
