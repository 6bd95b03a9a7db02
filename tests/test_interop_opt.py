"""OPT checkpoints (the CM3Leon block) against transformers as the oracle."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file
from transformers import OPTConfig, OPTForCausalLM

from cm3leon_jax import interop
from cm3leon_jax.interop import hf_opt
from cm3leon_jax.models.config import DecoderConfig
from cm3leon_jax.models.decoder import Decoder, init_params

VOCAB, BATCH, SEQ = 256, 2, 24
TOLERANCE = 1e-4
# OPT without biases or LayerNorm parameters, pre-LN, no projections: the CM3Leon block.
CM3LEON_BLOCK = dict(enable_bias=False, layer_norm_elementwise_affine=False,
                     do_layer_norm_before=True)


def hf_model(**changes) -> OPTForCausalLM:
  """A tiny random CM3Leon-block OPT with weights well away from its init scale."""
  fields = dict(vocab_size=VOCAB, hidden_size=64, ffn_dim=128, num_hidden_layers=3,
                num_attention_heads=4, max_position_embeddings=32, dropout=0.0,
                attn_implementation='eager', **CM3LEON_BLOCK)
  torch.manual_seed(0)
  model = OPTForCausalLM(OPTConfig(**{**fields, **changes})).eval()
  with torch.no_grad():
    for p in model.parameters():
      p.normal_(0.0, 0.1)
  return model


def hf_logits(model, tokens) -> np.ndarray:
  with torch.no_grad():
    return model(input_ids=torch.tensor(tokens)).logits.numpy()


def our_logits(config, params, tokens) -> np.ndarray:
  return np.asarray(Decoder(config).apply({'params': params}, jnp.asarray(tokens)))


def random_tokens(seed=0):
  return np.random.default_rng(seed).integers(0, VOCAB, (BATCH, SEQ))


@pytest.mark.parametrize('tie_word_embeddings,scan_layers', [(False, False), (True, True)])
def test_parity_with_transformers(tmp_path, tie_word_embeddings, scan_layers):
  model = hf_model(tie_word_embeddings=tie_word_embeddings)
  model.save_pretrained(tmp_path)
  has_head = 'lm_head.weight' in load_file(tmp_path / 'model.safetensors')
  assert has_head != tie_word_embeddings  # The tied case really exercises the fallback.
  config, params = interop.load_opt(str(tmp_path), dtype='float32', scan_layers=scan_layers)
  assert (config.family, config.activation, config.max_length) == ('cm3leon', 'relu', 32)
  tokens = random_tokens()
  diff = np.abs(our_logits(config, params, tokens) - hf_logits(model, tokens)).max()
  print(f'opt tied={tie_word_embeddings} scan_layers={scan_layers}: max |dlogit| = {diff:.3e}')
  assert diff <= TOLERANCE
  if tie_word_embeddings:
    np.testing.assert_array_equal(params['lm_head']['kernel'], params['embed']['token'].T)


def test_round_trip_through_transformers(tmp_path):
  config = DecoderConfig(vocab_size=VOCAB, num_layers=2, embed_dim=64, num_heads=4, mlp_dim=96,
                         max_length=32, dtype='float32', scan_layers=True)
  params = init_params(Decoder(config), jax.random.key(0))
  leaves, treedef = jax.tree.flatten(params)  # Perturbed: the residual projections start at 0.
  rng = np.random.default_rng(0)
  params = jax.tree.unflatten(
      treedef, [np.asarray(x) + rng.normal(0, 0.1, x.shape).astype(x.dtype) for x in leaves])
  interop.save_opt(str(tmp_path), config, params)
  model = OPTForCausalLM.from_pretrained(tmp_path, attn_implementation='eager').eval()
  tokens = random_tokens(1)
  diff = np.abs(our_logits(config, params, tokens) - hf_logits(model, tokens)).max()
  print(f'opt round trip: max |dlogit| = {diff:.3e}')
  assert diff <= TOLERANCE
  loaded_config, loaded = interop.load_opt(str(tmp_path), config)
  assert loaded_config == config
  jax.tree.map(np.testing.assert_array_equal, loaded, nn.meta.unbox(params))


@pytest.mark.parametrize('field,value', [
    ('enable_bias', True), ('layer_norm_elementwise_affine', True),
    ('do_layer_norm_before', False), ('word_embed_proj_dim', 32),
    ('_remove_final_layer_norm', True)])
def test_other_opt_blocks_are_rejected_naming_the_field(field, value):
  hf = dict(hidden_size=64, num_attention_heads=4, **CM3LEON_BLOCK)
  hf[field] = value
  with pytest.raises(interop.UnsupportedConfigError, match=field):
    interop.opt_config_from_hf(hf)


def test_loading_an_opt_with_biases_is_rejected(tmp_path):
  hf_model(enable_bias=True).save_pretrained(tmp_path)
  with pytest.raises(interop.UnsupportedConfigError, match='enable_bias=True'):
    interop.load_opt(str(tmp_path))


def test_missing_untied_head_names_the_tensor(tmp_path):
  hf_model(tie_word_embeddings=False).save_pretrained(tmp_path)
  tensors = load_file(tmp_path / 'model.safetensors')
  del tensors['lm_head.weight']
  save_file(tensors, tmp_path / 'model.safetensors', metadata={'format': 'pt'})
  with pytest.raises(interop.CheckpointMismatchError, match=r"missing tensor 'lm_head.weight'"):
    interop.load_opt(str(tmp_path))


def test_position_table_keeps_the_offset_rows(tmp_path):
  model = hf_model()
  model.save_pretrained(tmp_path)
  _, params = interop.load_opt(str(tmp_path), scan_layers=False)
  table = model.model.decoder.embed_positions.weight.detach().numpy()
  assert table.shape[0] == 32 + hf_opt.POSITION_OFFSET
  np.testing.assert_array_equal(params['embed']['position'], table[hf_opt.POSITION_OFFSET:])


def test_stack_and_unstack_layers_convert_between_layouts(tmp_path):
  hf_model().save_pretrained(tmp_path)
  _, unscanned = interop.load_opt(str(tmp_path), scan_layers=False)
  _, scanned = interop.load_opt(str(tmp_path), scan_layers=True)
  assert scanned['layers']['mlp']['wi']['kernel'].shape == (3, 64, 128)
  jax.tree.map(np.testing.assert_array_equal, interop.stack_layers(unscanned), scanned)
  jax.tree.map(np.testing.assert_array_equal, interop.unstack_layers(scanned, 3), unscanned)
  with pytest.raises(ValueError, match='number of layers'):
    interop.unstack_layers(scanned, 4)
