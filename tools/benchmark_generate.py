"""The `generate` benchmark of tools/benchmark.py: decoding speed against transformers' Chameleon.

In one run, on this machine's CPUs:

* same model: a random transformers ChameleonForConditionalGeneration (--generate_* sizes), its
  weights saved and loaded into our Decoder; --generate_batch prompts of --generate_prompt random
  tokens; --generate_new_tokens greedy tokens each (no stop token). ours: new tokens/s of
  `cm3leon_jax.decoding.generate` (jitted, warm); peer: new tokens/s of transformers'
  `model.generate` with torch on the same number of threads. Both must produce the same tokens
  (the table says whether they do), so the two compute the same thing.
* bandwidth floor: a Chameleon-shaped model whose float32 weights are far larger than the CPU
  caches (--floor_* sizes). Batch-2 decoding streams every weight matrix from memory once per
  token, so parameter bytes / memory bandwidth is the least time a token can take. The per-token
  time is the difference of two generate calls (N and 2N new tokens) divided by N, which removes
  the prefill and the call overhead; the bandwidth is the best of a few large reductions and
  matrix-vector products over --floor_bandwidth_mib of memory.

The issue's aim is ours >= 5x the peer's tokens/s. TensorFlow is never imported here (it crashes
torch in the same process).
"""

import os
import statistics
import tempfile
import time

from absl import flags
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cm3leon_jax import decoding, interop
from cm3leon_jax.decoding import DecodingConfig
from cm3leon_jax.interop import hf_chameleon
from cm3leon_jax.models.decoder import Decoder, init_params

flags.DEFINE_integer('generate_layers', 8, 'generate: decoder blocks of the compared model.')
flags.DEFINE_integer('generate_hidden', 512, 'generate: model width.')
flags.DEFINE_integer('generate_heads', 8, 'generate: attention heads (as many KV heads).')
flags.DEFINE_integer('generate_mlp', 1376, 'generate: SwiGLU width (Chameleon-7B ratio 2.69).')
flags.DEFINE_integer('generate_vocab', 8192, 'generate: vocabulary size.')
flags.DEFINE_integer('generate_batch', 2, 'generate: prompts per call (2: a CFG pair).')
flags.DEFINE_integer('generate_prompt', 32, 'generate: tokens per prompt.')
flags.DEFINE_integer('generate_new_tokens', 64, 'generate: greedy tokens generated per prompt.')
flags.DEFINE_integer('generate_repeats', 5, 'generate: timed calls per side (median reported).')
flags.DEFINE_enum('generate_peer_attn', 'sdpa', ['sdpa', 'eager'],
                  "generate: the peer's attn_implementation.")
flags.DEFINE_integer('floor_layers', 6, 'generate: blocks of the bandwidth-floor model.')
flags.DEFINE_integer('floor_hidden', 1024, 'generate: width of the bandwidth-floor model.')
flags.DEFINE_integer('floor_heads', 16, 'generate: heads of the bandwidth-floor model.')
flags.DEFINE_integer('floor_mlp', 2752, 'generate: SwiGLU width of the bandwidth-floor model.')
flags.DEFINE_integer('floor_vocab', 8192, 'generate: vocabulary of the bandwidth-floor model.')
flags.DEFINE_integer('floor_new_tokens', 32,
                     'generate: N; the floor model generates N and 2N tokens (time difference / N).')
flags.DEFINE_integer('floor_bandwidth_mib', 1024, 'generate: MiB read per bandwidth measurement.')
FLAGS = flags.FLAGS


def median_seconds(step, repeats: int) -> float:
  """Median wall time of `step` (which must synchronise) over `repeats` calls after one warm-up."""
  step()  # Compiles (ours) or warms the allocator (peer).
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    step()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def hf_sizes(layers, hidden, heads, mlp, vocab, max_length) -> dict:
  """ChameleonConfig fields of a text-only Chameleon of this shape (nothing masked as image)."""
  return dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=mlp, num_hidden_layers=layers,
              num_attention_heads=heads, num_key_value_heads=heads,
              max_position_embeddings=max_length,
              rope_parameters={'rope_type': 'default', 'rope_theta': 10000.0},
              vq_config=hf_chameleon.PLACEHOLDER_VQ_CONFIG, vocabulary_map={})


def peer_and_ours(fields: dict, attn_impl: str, directory: str):
  """(transformers model, our Decoder, our params on device) with the same random weights."""
  import torch  # pylint: disable=g-import-not-at-top
  from transformers import ChameleonConfig, ChameleonForConditionalGeneration  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  peer = ChameleonForConditionalGeneration(
      ChameleonConfig(**fields, attn_implementation=attn_impl)).eval()
  # No eos: both sides generate exactly max_new_tokens (min_new_tokens would instead suppress
  # eos in the peer's logits, which ours would not do).
  peer.generation_config.eos_token_id = None
  peer.generation_config.pad_token_id = 0
  peer.save_pretrained(directory)
  config, params = interop.load_chameleon(directory, dtype='float32')
  return peer, Decoder(config), jax.device_put(params)


def peer_generate_step(peer, prompts: np.ndarray, new_tokens: int):
  """A call of transformers' greedy `generate`, returning the new tokens [batch, new_tokens]."""
  import torch  # pylint: disable=g-import-not-at-top
  input_ids = torch.from_numpy(prompts.astype(np.int64))
  mask = torch.ones_like(input_ids)

  def step():
    with torch.no_grad():
      out = peer.generate(input_ids, attention_mask=mask, max_new_tokens=new_tokens,
                          do_sample=False)
    return out[:, prompts.shape[1]:].numpy()

  return step


def our_generate_step(model, params, prompts: np.ndarray, new_tokens: int):
  """A call of our greedy `generate` (synchronised: it returns numpy), new tokens [batch, n]."""
  config = DecodingConfig(max_new_tokens=new_tokens, temperature=0)
  prompt_lists = prompts.tolist()
  return lambda: decoding.generate(model, params, prompt_lists, config).tokens[:, 0]


def random_prompts(batch: int, length: int, vocab: int) -> np.ndarray:
  # Ids from 4 up: the low ids are specials (bos, pad, eos) in Chameleon's vocabulary.
  return np.random.default_rng(0).integers(4, vocab, (batch, length), dtype=np.int32)


def compare_with_peer(threads: int) -> dict:
  """Same model, prompts and tokens: ours and the peer's tokens/s and whether the tokens agree."""
  load = os.getloadavg()[0]
  new, batch = FLAGS.generate_new_tokens, FLAGS.generate_batch
  fields = hf_sizes(FLAGS.generate_layers, FLAGS.generate_hidden, FLAGS.generate_heads,
                    FLAGS.generate_mlp, FLAGS.generate_vocab,
                    FLAGS.generate_prompt + new + 16)  # Ours pads prompts to a multiple of 16.
  prompts = random_prompts(batch, FLAGS.generate_prompt, FLAGS.generate_vocab)
  with tempfile.TemporaryDirectory() as directory:
    peer, model, params = peer_and_ours(fields, FLAGS.generate_peer_attn, directory)
  ours_step = our_generate_step(model, params, prompts, new)
  peer_step = peer_generate_step(peer, prompts, new)
  agree = float(np.mean(ours_step() == peer_step()))
  ours_s = median_seconds(ours_step, FLAGS.generate_repeats)
  peer_s = median_seconds(peer_step, FLAGS.generate_repeats)
  return dict(ours_s=ours_s, peer_s=peer_s, ours=new * batch / ours_s, peer=new * batch / peer_s,
              agree=agree, params=param_count(params), threads=threads, load=load)


def param_count(params) -> int:
  return sum(x.size for x in jax.tree.leaves(params))


def streamed_bytes(params) -> int:
  """Parameter bytes a decode step reads: all but the token embedding table, of which it gathers
  only the current tokens' rows."""
  total = sum(x.nbytes for x in jax.tree.leaves(params))
  return total - params['embed']['token'].nbytes


def memory_bandwidth(mib: int) -> dict:
  """Read bandwidth (bytes/s) of a few memory-bound kernels over `mib` MiB of float32."""
  count = mib * 2**20 // 4
  host = np.ones(count, np.float32)
  device = jnp.asarray(host)
  matrix = device.reshape(-1, 1024)
  vectors = jnp.ones((1024, 2), jnp.float32)
  total = jax.jit(jnp.sum)
  matvec = jax.jit(jnp.matmul)
  kernels = {
      'numpy sum': host.sum,
      'jax sum': lambda: total(device).block_until_ready(),
      'jax [n, 1024] @ [1024, 2]': lambda: matvec(matrix, vectors).block_until_ready(),
  }
  return {name: host.nbytes / median_seconds(step, 5) for name, step in kernels.items()}


def bandwidth_floor() -> dict:
  """Our per-token decode time on the large --floor_* model against bytes / bandwidth."""
  n, batch = FLAGS.floor_new_tokens, FLAGS.generate_batch
  fields = hf_sizes(FLAGS.floor_layers, FLAGS.floor_hidden, FLAGS.floor_heads, FLAGS.floor_mlp,
                    FLAGS.floor_vocab, FLAGS.generate_prompt + 2 * n + 16)
  # Built from our own init (speed does not depend on the values), in the shape the peer's
  # config.json would load as.
  config = hf_chameleon.config_from_hf(fields, dtype='float32')
  model = Decoder(config)
  params = jax.jit(lambda key: nn.meta.unbox(init_params(model, key)))(jax.random.key(0))
  prompts = random_prompts(batch, FLAGS.generate_prompt, FLAGS.floor_vocab)
  short = median_seconds(our_generate_step(model, params, prompts, n), FLAGS.generate_repeats)
  long = median_seconds(our_generate_step(model, params, prompts, 2 * n), FLAGS.generate_repeats)
  per_token = (long - short) / n
  bandwidths = memory_bandwidth(FLAGS.floor_bandwidth_mib)
  bandwidth = max(bandwidths.values())
  floor = streamed_bytes(params) / bandwidth
  return dict(per_token=per_token, floor=floor, ratio=per_token / floor, bandwidth=bandwidth,
              bandwidths=bandwidths, params=param_count(params), bytes=streamed_bytes(params),
              short=short, long=long)


def generate_table(same: dict, floor: dict) -> str:
  """The generate benchmark's markdown report."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  new, batch = FLAGS.generate_new_tokens, FLAGS.generate_batch
  lines = [
      f'## generate: greedy decoding, float32, {same["threads"]} threads',
      '',
      f'model: Chameleon, layers={FLAGS.generate_layers} d={FLAGS.generate_hidden} '
      f'heads={FLAGS.generate_heads} mlp={FLAGS.generate_mlp} vocab={FLAGS.generate_vocab} '
      f'({same["params"] / 1e6:.1f} M params); batch={batch}, prompt={FLAGS.generate_prompt} '
      f'tokens, {new} new tokens each; median of {FLAGS.generate_repeats} warm calls',
      f'peer: transformers {transformers.__version__} ChameleonForConditionalGeneration.generate '
      f'(attn_implementation={FLAGS.generate_peer_attn}), torch {torch.__version__}; ours: '
      f'cm3leon_jax.decoding.generate, jax {jax.__version__}; same weights',
      f'the new tokens agree on {same["agree"]:.2%} of positions',
      f'XLA_FLAGS={os.environ.get("XLA_FLAGS", "")!r}; load average before: {same["load"]:.2f} '
      "(torch's threads slow down sharply when other processes compete for the cores)",
      '',
      '| metric | ours (cm3leon_jax) | peer (transformers) | ours/peer |',
      '|---|---|---|---|',
      f'| seconds per call | {same["ours_s"]:.3f} | {same["peer_s"]:.3f} | '
      f'{same["peer_s"] / same["ours_s"]:.2f} |',
      f'| new tokens/s | {same["ours"]:.1f} | {same["peer"]:.1f} | '
      f'{same["ours"] / same["peer"]:.2f} |',
      '',
      f'### bandwidth floor: layers={FLAGS.floor_layers} d={FLAGS.floor_hidden} '
      f'heads={FLAGS.floor_heads} mlp={FLAGS.floor_mlp} vocab={FLAGS.floor_vocab} '
      f'({floor["params"] / 1e6:.1f} M params, {floor["bytes"] / 2**20:.0f} MiB streamed per '
      f'step: all float32 weights but the embedding table), batch={batch}',
      '',
      f'per token (one decode step: {batch} tokens) = (time of {2 * FLAGS.floor_new_tokens} new tokens {floor["long"]:.3f} s - '
      f'time of {FLAGS.floor_new_tokens} {floor["short"]:.3f} s) / {FLAGS.floor_new_tokens}; '
      'floor = streamed bytes / the best measured bandwidth',
      '',
      '| memory-bound kernel | GB/s |',
      '|---|---|',
  ]
  lines += [f'| {name} | {rate / 1e9:.1f} |' for name, rate in floor['bandwidths'].items()]
  lines += [
      '',
      '| per-token time (ms) | floor (ms) | time / floor |',
      '|---|---|---|',
      f'| {floor["per_token"] * 1e3:.2f} | {floor["floor"] * 1e3:.2f} | {floor["ratio"]:.2f} |',
  ]
  return '\n'.join(lines)


def generate_benchmark() -> str:
  """Our generate against transformers' Chameleon generate, and the bandwidth floor; RESULT line."""
  import torch  # pylint: disable=g-import-not-at-top
  threads = len(os.sched_getaffinity(0))  # The CPUs XLA sizes its pool from; torch gets as many.
  torch.set_num_threads(threads)
  same = compare_with_peer(threads)
  floor = bandwidth_floor()
  print(generate_table(same, floor))
  return (f'RESULT generate ours={same["ours"]:.1f} peer={same["peer"]:.1f} unit=tokens/s '
          f'ratio={same["ours"] / same["peer"]:.3f} agree={same["agree"]:.3f} '
          f'per_token_ms={floor["per_token"] * 1e3:.3f} floor_ms={floor["floor"] * 1e3:.3f} '
          f'floor_ratio={floor["ratio"]:.3f} bandwidth_gbs={floor["bandwidth"] / 1e9:.1f}')
