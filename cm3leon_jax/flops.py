"""Training FLOPs per token of a decoder and model FLOPs utilisation (MFU).

The count follows MaxText's ``calculate_tflops_training_per_device``:

* Learnable-weight FLOPs: 2 FLOPs per multiply-accumulate of every weight matmul in the forward
  pass, times 3 for forward + backward (the backward pass computes two matmuls per forward one:
  the gradient of the input and of the weight). Counted matmuls: the MLP (one input matmul per
  activation branch: 1 for cm3leon, 2 for SwiGLU), the Q/K/V projections (grouped KV heads
  included), the attention output projection, and the LM head. The token and position embeddings
  are lookups, not matmuls, and the norms and elementwise ops are not counted. With N the number of
  matmul parameters this is 6 * N per token.
* Attention FLOPs: Q K^T and (softmax) V are each 2 * S * S * H * head_dim per layer and sequence
  in the forward pass, so 4 * S * H * head_dim per token and layer, times 3 for forward + backward:
  12 * num_layers * S * H * head_dim per token, with S the (padded) sequence length.

Causality: MaxText used to count the attention matmuls in full (Megatron's older convention); since
2025 it halves them "due to causal mask" (matching current Megatron-LM and NeMo). Both are offered:
``causal=True`` (the default, current MaxText) counts 6 * num_layers * S * H * head_dim per token,
``causal=False`` the full 12 * ... . The causal count is the work a causal kernel needs; a dense
masked implementation (XLA's default on CPU) still executes the full count.
"""

from cm3leon_jax.models.config import DecoderConfig


def matmul_params(config: DecoderConfig) -> int:
  """Number of weight-matrix entries every token multiplies (embedding lookups excluded)."""
  d, heads, kv_heads, head_dim = (config.embed_dim, config.num_heads, config.kv_heads,
                                  config.per_head_dim)
  mlp_inputs = 2 if config.family == 'chameleon' else 1  # SwiGLU has a gate and an up matrix.
  mlp = (mlp_inputs + 1) * d * config.hidden_dim
  qkv = d * (heads + 2 * kv_heads) * head_dim
  out = heads * head_dim * d
  lm_head = d * config.vocab_size
  return config.num_layers * (mlp + qkv + out) + lm_head


def attention_flops_per_token(config: DecoderConfig, seq_len: int, causal: bool = True) -> float:
  """Forward + backward FLOPs per token of the score and value matmuls (see module docstring)."""
  full = 12 * config.num_layers * seq_len * config.num_heads * config.per_head_dim
  return full / 2 if causal else float(full)


def training_flops_per_token(config: DecoderConfig, seq_len: int, causal: bool = True) -> float:
  """MaxText's forward + backward FLOPs per trained token (no optimizer update, no remat).

  Args:
    config: the decoder's shape.
    seq_len: tokens per sequence (MaxText's max_target_length); attention cost grows with it.
    causal: halve the attention term as current MaxText does (False: count it in full).
  """
  return 6 * matmul_params(config) + attention_flops_per_token(config, seq_len, causal)


def achieved_flops(config: DecoderConfig, seq_len: int, tokens_per_second: float,
                   causal: bool = True) -> float:
  """Model FLOP/s achieved when training at `tokens_per_second`."""
  return training_flops_per_token(config, seq_len, causal) * tokens_per_second


def mfu(config: DecoderConfig, seq_len: int, tokens_per_second: float, peak_flops_per_second: float,
        causal: bool = True) -> float:
  """Model FLOPs utilisation: achieved model FLOP/s over the hardware's peak FLOP/s (a fraction).

  Args:
    config: the decoder's shape.
    seq_len: tokens per sequence.
    tokens_per_second: trained tokens per second (per device, if the peak is per device).
    peak_flops_per_second: the device's peak (datasheet, or a measured matmul peak).
    causal: see ``training_flops_per_token``.
  """
  if peak_flops_per_second <= 0:
    raise ValueError(f'peak_flops_per_second must be > 0, got {peak_flops_per_second!r}.')
  return achieved_flops(config, seq_len, tokens_per_second, causal) / peak_flops_per_second


# Dense bf16 peak FLOP/s per device (datasheets), keyed by the start of jax's device_kind.
PEAK_FLOPS_BY_DEVICE_KIND = {
    'TPU v4': 275e12, 'TPU v5 lite': 197e12, 'TPU v5e': 197e12, 'TPU v5p': 459e12,
    'TPU v5': 459e12, 'TPU v6 lite': 918e12, 'TPU v6e': 918e12,
    'NVIDIA H100': 989e12, 'NVIDIA H200': 989e12, 'NVIDIA A100': 312e12,
}


def peak_flops_per_device(device, measure_cpu: bool = True) -> float:
  """A device's peak FLOP/s: the datasheet figure, or for a CPU a measured float32 matmul rate.

  Returns NaN for an unknown accelerator (MFU is then reported as NaN rather than guessed).
  """
  for kind, peak in PEAK_FLOPS_BY_DEVICE_KIND.items():
    if device.device_kind.startswith(kind):
      return peak
  if device.platform == 'cpu' and measure_cpu:
    return measured_matmul_flops()
  return float('nan')


def measured_matmul_flops(size: int = 1024, repeats: int = 5) -> float:
  """Best float32 FLOP/s of a jitted size x size matmul on the default device."""
  import time  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  a = jnp.ones((size, size), jnp.float32)
  matmul = jax.jit(lambda x: x @ x)
  matmul(a).block_until_ready()
  best = float('inf')
  for _ in range(repeats):
    start = time.perf_counter()
    matmul(a).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2 * size ** 3 / best
