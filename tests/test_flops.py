"""Training FLOPs per token against hand computations (cm3leon_jax/flops.py)."""

import jax
import numpy as np
import pytest

from cm3leon_jax import flops
from cm3leon_jax.models.config import DecoderConfig
from cm3leon_jax.models.decoder import Decoder, init_params

# d=8, 2 heads of 4, MLP 32, vocab 16, 2 layers.
TINY = DecoderConfig(vocab_size=16, num_layers=2, embed_dim=8, num_heads=2, max_length=32,
                     dtype='float32')


def test_matmul_params_by_hand():
  # Per layer: QKV 3*8*8=192, out 8*8=64, MLP 2*8*32=512 -> 768; two layers 1536; head 8*16=128.
  assert flops.matmul_params(TINY) == 1536 + 128


def test_training_flops_per_token_by_hand():
  seq = 10
  weights = 6 * (1536 + 128)
  attention_full = 12 * 2 * seq * 2 * 4  # layers * seq * heads * head_dim
  assert flops.training_flops_per_token(TINY, seq, causal=False) == weights + attention_full
  assert flops.training_flops_per_token(TINY, seq) == weights + attention_full / 2


def test_grouped_kv_and_swiglu_by_hand():
  cfg = TINY.replace(family='chameleon', num_kv_heads=1)
  # Per layer: Q 8*8=64, K and V 2*8*4=64, out 64, SwiGLU 3*8*32=768 -> 960; head 128.
  assert flops.matmul_params(cfg) == 2 * 960 + 128


def test_matmul_params_match_the_model():
  """Every parameter except the embedding tables is a matmul weight of the cm3leon decoder."""
  params = init_params(Decoder(TINY), jax.random.key(0))
  total = sum(np.size(x) for x in jax.tree.leaves(params))
  tables = TINY.vocab_size * TINY.embed_dim + TINY.max_length * TINY.embed_dim
  assert flops.matmul_params(TINY) == total - tables


def test_mfu():
  per_token = flops.training_flops_per_token(TINY, 10)
  assert flops.achieved_flops(TINY, 10, 100.0) == pytest.approx(100 * per_token)
  assert flops.mfu(TINY, 10, 100.0, 4 * per_token * 100) == pytest.approx(0.25)
  with pytest.raises(ValueError):
    flops.mfu(TINY, 10, 1.0, 0.0)
