"""Importing released tokenizer files: Meta's vqgan.ckpt + vqgan.yaml, and transformers'
ChameleonVQVAE (encoder only), each against its own PyTorch implementation as the oracle."""

import numpy as np
import pytest
import torch
import yaml

from cm3leon_jax.interop.errors import (CheckpointMismatchError, EncoderOnlyError,
                                        UnsupportedConfigError)
from cm3leon_jax.interop.hf_chameleon_vqvae import load_chameleon_vqvae
from cm3leon_jax.interop.meta_tokenizer import config_from_yaml, load_meta_tokenizer
from cm3leon_jax.models.vqgan import VQGAN
from test_vqgan import CONFIG, _apply, _taming_vqmodel, _torch_encode

# The HF twin of tests.test_vqgan.CONFIG (attention inside a level, a width change).
HF_VQ_CONFIG = dict(
    embed_dim=32, num_embeddings=512, double_latent=False, latent_channels=32, resolution=32,
    in_channels=3, base_channels=32, channel_multiplier=[1, 2, 2], num_res_blocks=1,
    attn_resolutions=[16], dropout=0.0, attn_type='vanilla')


def _images(n=3, seed=0):
  return np.random.default_rng(seed).uniform(-1, 1, (n, 32, 32, 3)).astype(np.float32)


def _nchw(images):
  return torch.from_numpy(images).permute(0, 3, 1, 2)


def _spread_codebook(embedding, z):
  """Draw the codebook on the latents' scale so the nearest-code search discriminates."""
  embedding.weight.normal_(0.0, float(z.std()))
  embedding.weight.add_(z.mean(dim=(0, 2, 3)))


def _meta_yaml(**dd_changes):
  dd = dict(double_z=False, z_channels=CONFIG.z_channels, resolution=CONFIG.resolution,
            in_channels=3, out_ch=3, ch=CONFIG.ch, ch_mult=list(CONFIG.ch_mult),
            num_res_blocks=CONFIG.num_res_blocks, attn_resolutions=list(CONFIG.attn_resolutions),
            dropout=0.0)
  dd.update(dd_changes)
  # The layout of Meta's vqgan.yaml, including the fields we ignore (target, lossconfig).
  return {'model': {'target': 'taming.models.vqgan.VQModel', 'base_learning_rate': 4.5e-6,
                    'params': {'embed_dim': CONFIG.embed_dim, 'n_embed': CONFIG.n_embed,
                               'ddconfig': dd,
                               'lossconfig': {'target': 'VQLPIPSWithDiscriminator'}}}}


def _write_yaml(path, document):
  with open(path, 'w') as f:
    yaml.safe_dump(document, f)
  return str(path)


@pytest.fixture(scope='module')
def meta_files(tmp_path_factory):
  """(taming oracle, ckpt path, yaml path) in the layout of Meta's Chameleon tokenizer release."""
  model = _taming_vqmodel(CONFIG)
  with torch.no_grad():
    _spread_codebook(model.quantize.embedding,
                     model.quant_conv(model.encoder(_nchw(_images()))))
  directory = tmp_path_factory.mktemp('meta')
  state = dict(model.state_dict())
  state['loss.discriminator.main.0.weight'] = torch.zeros(4, 3, 4, 4)
  torch.save({'state_dict': state}, str(directory / 'vqgan.ckpt'))
  return model, str(directory / 'vqgan.ckpt'), _write_yaml(directory / 'vqgan.yaml', _meta_yaml())


def test_meta_tokenizer_round_trip_matches_taming(meta_files):
  model, ckpt, yaml_path = meta_files
  config, params = load_meta_tokenizer(ckpt, yaml_path)
  assert config == CONFIG
  images = _images()
  with torch.no_grad():
    z_q, _, (_, _, want_codes) = _torch_encode(model, _nchw(images))
    want_images = model.decoder(model.post_quant_conv(z_q)).permute(0, 2, 3, 1).numpy()
  codes = np.asarray(_apply(params, images, method=VQGAN.encode_to_codes))
  print(f'meta ckpt codes equal to taming: {np.mean(codes == want_codes.numpy()):.2%}, '
        f'{len(np.unique(codes))} distinct')
  assert len(np.unique(codes)) > 20
  np.testing.assert_array_equal(codes, want_codes.numpy())
  decoded = np.asarray(_apply(params, codes, method=VQGAN.decode_codes))
  print(f'meta ckpt decode max |diff| vs taming: {np.abs(decoded - want_images).max():.2e}')
  np.testing.assert_allclose(decoded, want_images, atol=1e-4, rtol=0)


@pytest.mark.parametrize('change, field', [
    ({'double_z': True}, 'double_z'),
    ({'out_ch': 1}, 'out_ch'),
    ({'attn_type': 'linear'}, 'attn_type'),
    ({'use_linear_attn': True}, 'use_linear_attn'),
])
def test_unsupported_yaml_field_is_named_with_the_file(tmp_path, change, field):
  path = _write_yaml(tmp_path / 'vqgan.yaml', _meta_yaml(**change))
  with pytest.raises(UnsupportedConfigError, match=field) as info:
    config_from_yaml(path)
  assert path in str(info.value)


def test_missing_yaml_field_is_named_with_the_file(tmp_path):
  document = _meta_yaml()
  del document['model']['params']['ddconfig']['z_channels']
  path = _write_yaml(tmp_path / 'vqgan.yaml', document)
  with pytest.raises(UnsupportedConfigError, match='model.params.ddconfig.z_channels') as info:
    config_from_yaml(path)
  assert path in str(info.value)


def test_meta_checkpoint_that_disagrees_with_its_yaml_is_explained(meta_files, tmp_path):
  _, ckpt, _ = meta_files
  document = _meta_yaml()
  document['model']['params']['n_embed'] = 256
  with pytest.raises(CheckpointMismatchError, match='quantize.embedding.weight'):
    load_meta_tokenizer(ckpt, _write_yaml(tmp_path / 'vqgan.yaml', document))


def _hf_vqvae():
  """A tiny random transformers ChameleonVQVAE with randomised norms and a spread codebook."""
  from transformers.models.chameleon.configuration_chameleon import ChameleonVQVAEConfig
  from transformers.models.chameleon.modeling_chameleon import ChameleonVQVAE
  torch.manual_seed(1)
  model = ChameleonVQVAE(ChameleonVQVAEConfig(**HF_VQ_CONFIG)).eval()
  with torch.no_grad():
    for module in model.modules():
      if isinstance(module, torch.nn.GroupNorm):
        module.weight.normal_(1.0, 0.3)
        module.bias.normal_(0.0, 0.3)
    _spread_codebook(model.quantize.embedding,
                     model.quant_conv(model.encoder(_nchw(_images()))))
  return model


def _hf_codes(model, images):
  with torch.no_grad():
    return model.encode(_nchw(images), return_dict=True).image_tokens.numpy()


@pytest.fixture(scope='module')
def hf_vqvae():
  return _hf_vqvae()


def _check_codes_equal(tokenizer, model):
  images = _images(4, seed=3)
  want = _hf_codes(model, images).reshape(4, 8, 8)
  got = np.asarray(tokenizer.encode(images))
  print(f'ChameleonVQVAE codes equal: {np.mean(got == want):.2%} of {want.size}, '
        f'{len(np.unique(want))} distinct')
  assert len(np.unique(want)) > 20
  np.testing.assert_array_equal(got, want)


def test_hf_vqvae_state_dict_gives_equal_codes(hf_vqvae):
  tokenizer = load_chameleon_vqvae(hf_vqvae.state_dict(), HF_VQ_CONFIG)
  config, params, encoder_only = tokenizer
  assert encoder_only and config == CONFIG and 'decoder' not in params
  _check_codes_equal(tokenizer, hf_vqvae)


def test_hf_vqvae_save_pretrained_directory(hf_vqvae, tmp_path):
  hf_vqvae.save_pretrained(tmp_path)
  _check_codes_equal(load_chameleon_vqvae(str(tmp_path)), hf_vqvae)


def test_chameleon_for_conditional_generation_directory(hf_vqvae, tmp_path):
  from transformers import ChameleonConfig, ChameleonForConditionalGeneration
  config = ChameleonConfig(
      vocab_size=600, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
      vq_config=HF_VQ_CONFIG, vocabulary_map={})
  model = ChameleonForConditionalGeneration(config).eval()
  model.model.vqmodel.load_state_dict(hf_vqvae.state_dict())
  model.save_pretrained(tmp_path)
  tokenizer = load_chameleon_vqvae(str(tmp_path))
  _check_codes_equal(tokenizer, hf_vqvae)


def test_encoder_only_decode_names_the_full_checkpoint(hf_vqvae):
  tokenizer = load_chameleon_vqvae(hf_vqvae.state_dict(), HF_VQ_CONFIG)
  with pytest.raises(EncoderOnlyError, match=r'vqgan\.ckpt \+ vqgan\.yaml'):
    tokenizer.decode(np.zeros((1, 8, 8), np.int32))


def test_unsupported_hf_attention_is_named(hf_vqvae):
  with pytest.raises(UnsupportedConfigError, match='attn_type'):
    load_chameleon_vqvae(hf_vqvae.state_dict(), {**HF_VQ_CONFIG, 'attn_type': 'none'})


class _NotATensor:
  """Stands for the non-tensor objects (callbacks, hparams) a full Lightning checkpoint holds."""


def test_checkpoint_with_pickled_objects_is_refused_clearly(meta_files, tmp_path):
  _, _, yaml_path = meta_files
  path = str(tmp_path / 'vqgan.ckpt')
  torch.save({'state_dict': {}, 'callbacks': _NotATensor()}, path)
  with pytest.raises(CheckpointMismatchError, match='weights_only') as info:
    load_meta_tokenizer(path, yaml_path)
  assert path in str(info.value)
