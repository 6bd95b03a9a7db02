"""The VQ-GAN against taming-transformers' own modules (the oracle), its configs and weight import.

The oracle is assembled from taming's Encoder, VectorQuantizer2 and Decoder with the attribute
names of taming's VQModel, so its state dict has exactly the keys of a released checkpoint
(importing taming.models.vqgan would need pytorch_lightning).
"""

import glob
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from cm3leon_jax import gin_utils
from cm3leon_jax.interop import taming_reference
from cm3leon_jax.interop.errors import CheckpointMismatchError
from cm3leon_jax.interop.taming_vqgan import load_taming_checkpoint, params_from_torch_state_dict
from cm3leon_jax.models.config import ConfigError
from cm3leon_jax.models.vqgan import VQGAN, VectorQuantizer, abstract_params
from cm3leon_jax.models.vqgan_config import VQGANConfig

# Attention inside a level (16) as well as in the middle block; ch_mult changes width, so the
# 1x1 nin_shortcut is exercised too.
CONFIG = VQGANConfig(resolution=32, ch=32, ch_mult=(1, 2, 2), num_res_blocks=1,
                     attn_resolutions=(16,), z_channels=32, embed_dim=32, n_embed=512)
VQGAN_FILES = sorted(glob.glob(os.path.join(gin_utils.GIN_DIR, 'vqgan', '*.gin')))
# Parameter counts (millions) that catch a wrong shape in a gin file.
EXPECTED_MILLIONS = {'chameleon': (60, 80), 'make_a_scene_256': (50, 80), 'tiny': (0.5, 2.0)}


def _taming_vqmodel(config: VQGANConfig) -> torch.nn.Module:
  """taming's VQModel layout built from its modules, with randomised norms."""
  # The Makefile installs the oracle (taming-transformers-rom1504, --no-deps); a missing oracle
  # is a failed setup, not a reason to skip.
  model = taming_reference.build_vqmodel(config)
  with torch.no_grad():
    for module in model.modules():
      # Identity norms would hide a scale/bias mix-up in the conversion.
      if isinstance(module, torch.nn.GroupNorm):
        module.weight.normal_(1.0, 0.3)
        module.bias.normal_(0.0, 0.3)
  return model.eval()


def _torch_encode(model, images_nchw):
  return model.quantize(model.quant_conv(model.encoder(images_nchw)))


@pytest.fixture(scope='module')
def oracle():
  """(taming model, our params, NHWC test images) with a codebook spread like the latents."""
  model = _taming_vqmodel(CONFIG)
  images = np.random.default_rng(0).uniform(-1, 1, (3, 32, 32, 3)).astype(np.float32)
  with torch.no_grad():
    z = model.quant_conv(model.encoder(torch.from_numpy(images).permute(0, 3, 1, 2)))
    # The default U(-1/n, 1/n) codebook sits far from every latent, so a few codes would win;
    # a codebook on the latents' scale makes the nearest-code search discriminating.
    model.quantize.embedding.weight.normal_(0.0, float(z.std()))
    model.quantize.embedding.weight.add_(z.mean(dim=(0, 2, 3)))
  state = {k: v.numpy() for k, v in model.state_dict().items()}
  return model, params_from_torch_state_dict(state, CONFIG), images


def _apply(params, *args, method=None):
  return jax.jit(lambda p, *a: VQGAN(CONFIG).apply({'params': p}, *a, method=method))(params, *args)


def test_codes_equal_taming(oracle):
  model, params, images = oracle
  with torch.no_grad():
    want = _torch_encode(model, torch.from_numpy(images).permute(0, 3, 1, 2))[2][2].numpy()
  got = np.asarray(_apply(params, images, method=VQGAN.encode_to_codes))
  assert got.dtype == np.int32 and got.shape == (3, 8, 8)
  print(f'codes equal to taming: {np.mean(got == want):.2%} of {want.size}, '
        f'{len(np.unique(want))} distinct')
  assert len(np.unique(want)) > 20, 'codebook too degenerate for a meaningful comparison'
  np.testing.assert_array_equal(got, want)


def test_decode_codes_matches_taming(oracle):
  model, params, images = oracle
  codes = np.random.default_rng(1).integers(0, CONFIG.n_embed, (2, 8, 8)).astype(np.int32)
  with torch.no_grad():
    z_q = model.quantize.embedding(torch.from_numpy(codes).long()).permute(0, 3, 1, 2)
    want = model.decoder(model.post_quant_conv(z_q)).permute(0, 2, 3, 1).numpy()
  got = np.asarray(_apply(params, codes, method=VQGAN.decode_codes))
  print(f'decode_codes max |diff| vs taming: {np.abs(got - want).max():.2e}')
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_forward_and_loss_match_taming(oracle):
  model, params, images = oracle
  with torch.no_grad():
    z_q, loss, _ = _torch_encode(model, torch.from_numpy(images).permute(0, 3, 1, 2))
    want = model.decoder(model.post_quant_conv(z_q)).permute(0, 2, 3, 1).numpy()
  got, losses = _apply(params, images)
  print(f'reconstruction max |diff| vs taming: {np.abs(np.asarray(got) - want).max():.2e}; '
        f'loss {float(losses["quantizer"]):.6f} vs {float(loss):.6f}')
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-4, rtol=0)
  np.testing.assert_allclose(float(losses['quantizer']), float(loss), rtol=1e-5)
  np.testing.assert_allclose(
      float(losses['quantizer']),
      float(losses['commitment']) + CONFIG.beta * float(losses['codebook']), rtol=1e-6)


def test_straight_through_gradient(oracle):
  _, params, images = oracle
  z = jax.random.normal(jax.random.key(0), (2, 4, 4, CONFIG.embed_dim))
  quantizer = {'params': params['quantize']}
  quantized, vjp = jax.vjp(lambda z: VectorQuantizer(CONFIG).apply(quantizer, z)[0], z)
  cotangent = jax.random.normal(jax.random.key(1), z.shape)
  # The quantizer passes the gradient through unchanged.
  np.testing.assert_array_equal(np.asarray(vjp(cotangent)[0]), np.asarray(cotangent))

  def loss(p):
    reconstruction, terms = VQGAN(CONFIG).apply({'params': p}, images)
    return jnp.mean((reconstruction - images) ** 2) + terms['quantizer']

  grads = jax.jit(jax.grad(loss))(params)
  encoder_norm = sum(float(jnp.abs(g).sum()) for g in jax.tree.leaves(grads['encoder']))
  assert np.isfinite(encoder_norm) and encoder_norm > 0
  assert float(jnp.abs(grads['quantize']['embedding']).sum()) > 0


@pytest.mark.parametrize('path', VQGAN_FILES, ids=os.path.basename)
def test_gin_vqgan_builds_abstractly(path):
  config = gin_utils.vqgan_config([path])
  assert isinstance(config, VQGANConfig)
  count = sum(x.size for x in jax.tree.leaves(abstract_params(config)))
  name = os.path.basename(path)[:-4]
  print(f'{name}: {count:,} parameters, {config.latent_size}x{config.latent_size} codes '
        f'of {config.n_embed}')
  low, high = EXPECTED_MILLIONS[name]
  assert low * 1e6 <= count <= high * 1e6


@pytest.mark.parametrize('name', ['chameleon', 'make_a_scene_256'])
def test_published_tokenizers_give_1024_codes_of_8192(name):
  config = gin_utils.vqgan_config([os.path.join(gin_utils.GIN_DIR, 'vqgan', f'{name}.gin')])
  assert config.tokens_per_image == 1024 and config.n_embed == 8192


@pytest.mark.parametrize('field, value', [
    ('resolution', 30), ('ch', 0), ('ch_mult', (1, 0)), ('num_res_blocks', -1),
    ('attn_resolutions', (7,)), ('n_embed', 0), ('beta', -0.5), ('dropout', 1.0),
    ('double_z', True), ('embed_dim', 2.5),
])
def test_bad_config_names_the_field(field, value):
  with pytest.raises(ConfigError, match=f'VQGANConfig.{field}'):
    CONFIG.replace(**{field: value})


def test_width_not_divisible_by_groups_is_explained():
  with pytest.raises(ConfigError, match='multiple of 32'):
    VQGANConfig(ch=48)


def _torch_state(oracle):
  return {k: v.numpy() for k, v in oracle[0].state_dict().items()}


def test_misshapen_tensor_is_named_with_both_shapes(oracle):
  state = _torch_state(oracle)
  state['decoder.up.1.block.0.conv1.weight'] = np.zeros((64, 64, 3, 1), np.float32)
  with pytest.raises(CheckpointMismatchError) as info:
    params_from_torch_state_dict(state, CONFIG)
  message = str(info.value)
  assert 'decoder.up.1.block.0.conv1.weight' in message
  assert '(64, 64, 3, 3)' in message and '(64, 64, 3, 1)' in message


def test_missing_and_unexpected_tensors_are_named(oracle):
  state = _torch_state(oracle)
  del state['encoder.mid.attn_1.q.bias']
  state['quantize.used'] = np.zeros(3, np.float32)
  with pytest.raises(CheckpointMismatchError, match='missing encoder.mid.attn_1.q.bias') as info:
    params_from_torch_state_dict(state, CONFIG)
  assert 'unexpected quantize.used' in str(info.value)


def test_load_lightning_checkpoint_skips_loss(oracle, tmp_path):
  state = dict(oracle[0].state_dict())
  state['loss.discriminator.main.0.weight'] = torch.zeros(2, 3)
  path = str(tmp_path / 'last.ckpt')
  torch.save({'state_dict': state, 'global_step': 7}, path)
  loaded = load_taming_checkpoint(path)
  assert not any(name.startswith('loss.') for name in loaded)
  params = params_from_torch_state_dict(loaded, CONFIG)
  np.testing.assert_array_equal(params['quantize']['embedding'],
                                oracle[1]['quantize']['embedding'])
