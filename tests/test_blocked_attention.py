"""The 'blocked' attention computes exactly what jax.nn.dot_product_attention computes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cm3leon_jax.models.blocked_attention import blocked_causal_attention
from helpers import model_and_params, random_tokens, tiny_config


@pytest.mark.parametrize('block_size', [7, 16, 40, 64])
@pytest.mark.parametrize('kv_heads', [4, 2, 1])
def test_matches_library_attention_with_segments(block_size, kv_heads):
  k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
  query = jax.random.normal(k1, (2, 40, 4, 8))
  key = jax.random.normal(k2, (2, 40, kv_heads, 8))
  value = jax.random.normal(k3, (2, 40, kv_heads, 8))
  segments = jnp.array([[1] * 15 + [2] * 20 + [3] * 5, [1] * 40])
  mask = (segments[:, :, None] == segments[:, None, :])[:, None]
  expected = jax.nn.dot_product_attention(query, key, value, mask=mask, is_causal=True)
  got = blocked_causal_attention(query, key, value, segments, block_size)
  np.testing.assert_allclose(got, expected, atol=1e-6)


@pytest.mark.parametrize('family', ['cm3leon', 'chameleon'])
def test_decoder_logits_and_gradients_match_between_implementations(family):
  tokens = random_tokens((2, 24), 256)
  segments = jnp.array([[1] * 10 + [2] * 14, [1] * 24])

  def run(impl):
    model, params = model_and_params(tiny_config(family=family, attention_impl=impl,
                                                 attention_block=8))
    fn = lambda p: model.apply({'params': p}, tokens, segment_ids=segments)
    return fn(params), jax.grad(lambda p: fn(p).sum())(params)

  (logits, grads), (blocked_logits, blocked_grads) = run(None), run('blocked')
  np.testing.assert_allclose(blocked_logits, logits, atol=1e-5)
  # Gradients of summed logits are large sums: compare relative to their size.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), blocked_grads,
               grads)
