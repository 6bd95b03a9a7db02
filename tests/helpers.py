"""Small configs and utilities shared by the tests."""

import os
import subprocess
import sys

import jax
import flax.linen as nn

from cm3leon_jax.models.config import DecoderConfig
from cm3leon_jax.models.decoder import Decoder, init_params

# The repository root.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(family='cm3leon', **overrides) -> DecoderConfig:
  """A tiny fp32 config of either family; chameleon gets grouped KV heads and QK-norm."""
  base = dict(family=family, vocab_size=256, num_layers=2, embed_dim=64, num_heads=4,
              max_length=64, dtype='float32', zero_init_residual=False)
  if family == 'chameleon':
    base.update(num_kv_heads=2, mlp_dim=96, qk_norm=True)
  base.update(overrides)
  return DecoderConfig(**base)


def model_and_params(config, seed=0):
  """The Decoder and its unboxed random parameters."""
  model = Decoder(config)
  # Jitted: one compilation instead of one per initializer op.
  return model, nn.meta.unbox(jax.jit(lambda rng: init_params(model, rng))(jax.random.key(seed)))


def random_tokens(shape, vocab, seed=1):
  return jax.random.randint(jax.random.key(seed), shape, 0, vocab)


def run_tool(args, env=None, timeout=900) -> subprocess.CompletedProcess:
  """Run `python ARGS...` from the repository root (a tool: `['tools/x.py', '--flag=...']`);
  fail the test with the end of its stderr unless it exits 0."""
  result = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                          env=env, timeout=timeout)
  assert result.returncode == 0, result.stderr[-3000:]
  return result

