"""Sharding on 8 forced CPU devices: mesh (data 2, fsdp 2, tensor 2) == one device."""

import flax.linen as nn
import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from cm3leon_jax import partitioning
from cm3leon_jax.training.losses import lm_loss
from cm3leon_jax.models.decoder import Decoder
from helpers import random_tokens, tiny_config


def test_mesh_config_resolves_the_rest_axis():
  assert partitioning.MeshConfig(data=2, fsdp=-1, tensor=2).shape(8) == (2, 2, 2)
  assert partitioning.MeshConfig(data=-1, fsdp=1, tensor=1).shape(8) == (8, 1, 1)


@pytest.mark.parametrize('config, message', [
    (partitioning.MeshConfig(data=3, fsdp=-1, tensor=1), 'cannot be split'),
    (partitioning.MeshConfig(data=2, fsdp=2, tensor=1), 'needs 4 devices, but 8'),
    (partitioning.MeshConfig(data=-1, fsdp=-1, tensor=1), 'At most one mesh axis'),
    (partitioning.MeshConfig(data=0, fsdp=-1, tensor=1), "'data' must be a positive size"),
])
def test_bad_mesh_is_reported(config, message):
  with pytest.raises(partitioning.MeshError, match=message):
    config.shape(8)


@pytest.fixture(scope='module', params=['cm3leon', 'chameleon'])
def sharded_setup(request):
  assert jax.device_count() == 8, 'tests/conftest.py forces 8 CPU devices'
  config = tiny_config(family=request.param)
  model = Decoder(config)
  mesh = partitioning.make_mesh(partitioning.MeshConfig(data=2, fsdp=2, tensor=2))
  tokens = random_tokens((4, 16), config.vocab_size)
  init = lambda rng: model.init(rng, tokens)['params']
  params, shardings = partitioning.sharded_init(init, mesh, jax.random.key(0))
  return config, model, mesh, tokens, params, shardings


def loss_fn(model, params, tokens):
  logits = model.apply({'params': params}, tokens[:, :-1])
  return lm_loss(logits, tokens[:, 1:])[0], logits


def test_parameters_are_really_sharded(sharded_setup):
  config, _, _, _, params, shardings = sharded_setup
  assert shardings['embed']['token'].spec == P('tensor', 'fsdp')
  assert shardings['lm_head']['kernel'].spec == P('fsdp', 'tensor')
  assert shardings['layers']['attention']['query']['kernel'].spec == P(None, 'fsdp', 'tensor', None)
  assert shardings['layers']['mlp']['wo']['kernel'].spec == P(None, 'tensor', 'fsdp')
  token = params['embed']['token']
  assert token.addressable_shards[0].data.shape == (config.vocab_size // 2, config.embed_dim // 2)
  report = partitioning.parameter_report(params)
  assert report.max_bytes_per_device < report.total_bytes / 3


def test_sharded_forward_and_gradients_equal_single_device(sharded_setup):
  _, model, mesh, tokens, params, shardings = sharded_setup
  single = jax.device_put(params, jax.devices()[0])
  grad_fn = jax.value_and_grad(lambda p, t: loss_fn(model, p, t), has_aux=True)
  (loss, logits), grads = jax.jit(grad_fn)(single, tokens)

  batch_sharding = partitioning.activation_sharding(mesh, ('batch', 'length'))
  with jax.set_mesh(mesh), nn.logical_axis_rules(partitioning.LOGICAL_AXIS_RULES):
    sharded_step = jax.jit(grad_fn, in_shardings=(shardings, batch_sharding),
                           out_shardings=((None, None), shardings))
    (s_loss, s_logits), s_grads = sharded_step(params, jax.device_put(tokens, batch_sharding))

  assert len(s_logits.sharding.device_set) == 8
  np.testing.assert_allclose(s_loss, loss, atol=1e-5)
  np.testing.assert_allclose(s_logits, logits, atol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), s_grads, grads)
  assert s_grads['embed']['token'].sharding.spec == P('tensor', 'fsdp')
