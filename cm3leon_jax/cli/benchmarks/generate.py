"""The `generate` benchmark: decoding speed against transformers' Chameleon.

In one run, on this machine's CPUs:

* same model: a random transformers ChameleonForConditionalGeneration (--generate_* sizes), its
  weights saved and loaded into our Decoder; --generate_batch prompts of --generate_prompt random
  tokens; --generate_new_tokens greedy tokens each (no stop token). ours: new tokens/s of
  `cm3leon_jax.decoding.generate` (jitted, warm); peer: new tokens/s of transformers'
  `model.generate` with torch on the same number of threads. Both must produce the same tokens,
  so the two compute the same thing: the table and the RESULT line say on what share of positions
  they agree and give a digest of each side's tokens.
* bandwidth floor: a Chameleon-shaped model whose float32 weights are far larger than the CPU
  caches (--floor_* sizes). Batch-2 decoding streams every weight matrix from memory once per
  token, so parameter bytes / memory bandwidth is the least time a token can take. The per-token
  time is the difference of two generate calls (N and 2N new tokens) divided by N, which removes
  the prefill and the call overhead; the bandwidth is the best of a few large reductions and
  matrix-vector products over --floor_bandwidth_mib of memory.
* --gpu_7b (on a GPU, instead of the above): images/s of text-to-image sampling with CFG on
  CM3Leon-7B-shaped random bfloat16 weights, against the same kind of floor.

The issue's aim is ours >= 5x the peer's tokens/s. Measured on the shared 2-core CPU (jaxlib
0.10): XLA:CPU runs our decoder's [2, d] @ [d, n] products (kernels stored [in, out]) at about
half the bandwidth of the [n, d] @ [d, 2] layout torch's Linear uses, which bounds our per-step
time once the weights leave the cache. TensorFlow is never imported here (it crashes torch in the
same process).
"""

import hashlib
import os
import tempfile

from absl import flags
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cm3leon_jax import decoding, interop
from cm3leon_jax.cli.benchmarks import harness
from cm3leon_jax.cli.benchmarks.decoder import our_model_shape
from cm3leon_jax.decoding import DecodingConfig
from cm3leon_jax.interop import hf_chameleon
from cm3leon_jax.models.decoder import Decoder, init_params

FLAGS = flags.FLAGS


def define_flags():
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
  # Unrolled layers decode faster on XLA:CPU: on the floor model a step took ~54 ms unrolled
  # against ~82 ms with nn.scan (where each iteration slices its layer out of the stacked weights).
  flags.DEFINE_bool('generate_scan_layers', False, 'generate: stack our blocks with nn.scan.')
  flags.DEFINE_integer('floor_layers', 6, 'generate: blocks of the bandwidth-floor model.')
  flags.DEFINE_integer('floor_hidden', 1024, 'generate: width of the bandwidth-floor model.')
  flags.DEFINE_integer('floor_heads', 16, 'generate: heads of the bandwidth-floor model.')
  flags.DEFINE_integer('floor_mlp', 2752, 'generate: SwiGLU width of the bandwidth-floor model.')
  flags.DEFINE_integer('floor_vocab', 8192, 'generate: vocabulary of the bandwidth-floor model.')
  flags.DEFINE_integer('floor_new_tokens', 32,
                       'generate: N; the floor model generates N and 2N tokens (time diff. / N).')
  flags.DEFINE_integer('floor_bandwidth_mib', 1024, 'generate: MiB read per bandwidth measurement.')
  flags.DEFINE_bool('gpu_7b', False,
                    'generate: instead, images/s with CFG of CM3Leon-7B-shaped random bfloat16 '
                    'weights on the GPU against its bandwidth floor.')
  flags.DEFINE_integer('gpu_images', 8, 'generate --gpu_7b: images per call (2 CFG streams each).')
  flags.DEFINE_integer('gpu_tokens_per_image', 1024, 'generate --gpu_7b: codes per image.')


# CM3Leon-7B's decoder in Chameleon's block (transformers' ChameleonConfig defaults, 7B).
CHAMELEON_7B = dict(layers=32, hidden=4096, heads=32, mlp=11008, vocab=65536)


def hf_sizes(layers, hidden, heads, mlp, vocab, max_length) -> dict:
  """ChameleonConfig fields of a text-only Chameleon of this shape (nothing masked as image)."""
  return dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=mlp,
              num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
              max_position_embeddings=max_length,
              rope_parameters={'rope_type': 'default', 'rope_theta': 10000.0},
              vq_config=hf_chameleon.PLACEHOLDER_VQ_CONFIG, vocabulary_map={})


def peer_and_ours(fields: dict, attn_impl: str, directory: str):
  """(transformers model, our Decoder, our params on device) with the same random weights."""
  import torch  # pylint: disable=g-import-not-at-top
  # pylint: disable-next=g-import-not-at-top
  from transformers import ChameleonConfig, ChameleonForConditionalGeneration
  torch.manual_seed(0)
  peer = ChameleonForConditionalGeneration(
      ChameleonConfig(**fields, attn_implementation=attn_impl)).eval()
  # No eos: both sides generate exactly max_new_tokens (min_new_tokens would instead suppress
  # eos in the peer's logits, which ours would not do).
  peer.generation_config.eos_token_id = None
  peer.generation_config.pad_token_id = 0
  peer.save_pretrained(directory)
  config, params = interop.load_chameleon(directory, dtype='float32',
                                         scan_layers=FLAGS.generate_scan_layers)
  return peer, Decoder(config), jax.device_put(params)


def peer_shape(peer, prompts: np.ndarray, tokens: np.ndarray) -> str:
  """The shape the peer ran: its prompts [batch, prompt], the new tokens it gave and the sizes of
  its modules."""
  model = peer.model
  vocab, width = model.embed_tokens.weight.shape
  return harness.shape(batch=prompts.shape[0], prompt=prompts.shape[1], new_tokens=tokens.shape[1],
                       layers=len(model.layers), hidden=width,
                       heads=peer.config.num_attention_heads,
                       mlp=model.layers[0].mlp.down_proj.in_features, vocab=vocab)


def our_shape(params, prompts: np.ndarray, tokens: np.ndarray) -> str:
  """The shape ours ran, in the terms of `peer_shape`, the model read off its parameters."""
  model = our_model_shape(params)
  return harness.shape(batch=prompts.shape[0], prompt=prompts.shape[1], new_tokens=tokens.shape[1],
                       layers=model['layers'], hidden=model['embed_dim'], heads=model['heads'],
                       mlp=model['mlp'], vocab=model['vocab'])


def tokens_digest(tokens: np.ndarray) -> str:
  """A short digest of generated tokens [batch, n] (equal digests: the same tokens)."""
  tokens = np.ascontiguousarray(tokens, np.int64)
  return hashlib.sha256(repr(tokens.shape).encode() + tokens.tobytes()).hexdigest()[:12]


def agreement(ours: np.ndarray, peer: np.ndarray) -> float:
  """Share of positions where both sides' tokens are equal (0 when their shapes differ)."""
  return float(np.mean(ours == peer)) if ours.shape == peer.shape else 0.0


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
  """Same model, prompts and tokens: ours and the peer's tokens/s, the shapes each ran and whether
  their tokens agree."""
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
  ours_tokens, peer_tokens = np.asarray(ours_step()), peer_step()
  seconds = harness.interleaved_medians({'ours': ours_step, 'peer': peer_step},
                                        FLAGS.generate_repeats, warmup=1)
  ours_s, peer_s = seconds['ours'], seconds['peer']
  return dict(ours_s=ours_s, peer_s=peer_s, ours=new * batch / ours_s, peer=new * batch / peer_s,
              agree=agreement(ours_tokens, peer_tokens), ours_tokens=tokens_digest(ours_tokens),
              peer_tokens=tokens_digest(peer_tokens),
              ours_shape=our_shape(params, prompts, ours_tokens),
              peer_shape=peer_shape(peer, prompts, peer_tokens), params=param_count(params),
              threads=threads, load=load)


def param_count(params) -> int:
  return sum(x.size for x in jax.tree.leaves(params))


def streamed_bytes(params) -> int:
  """Parameter bytes a decode step reads: all but the token embedding table, of which it gathers
  only the current tokens' rows."""
  total = sum(x.nbytes for x in jax.tree.leaves(params))
  return total - params['embed']['token'].nbytes


def random_model(fields: dict, dtype: str, scan_layers: bool):
  """(our Decoder, random params on device) in the shape a Chameleon config.json of `fields`
  loads as; speed does not depend on the values, so our own init stands in for weights."""
  config = hf_chameleon.config_from_hf(fields, dtype=dtype, param_dtype=dtype,
                                       scan_layers=scan_layers)
  model = Decoder(config)
  return model, jax.jit(lambda key: nn.meta.unbox(init_params(model, key)))(jax.random.key(0))


def memory_bandwidth(mib: int, host: bool = True) -> dict:
  """Read bandwidth (bytes/s) of a few memory-bound kernels over `mib` MiB of float32 (with
  `host`, numpy's too; jax's run on the default device)."""
  count = mib * 2**20 // 4
  device = jnp.ones(count, jnp.float32)
  tall, wide = device.reshape(-1, 1024), device.reshape(1024, -1)
  columns, rows = jnp.ones((1024, 2), jnp.float32), jnp.ones((2, 1024), jnp.float32)
  total = jax.jit(jnp.sum)
  matvec = jax.jit(jnp.matmul)
  kernels = {'numpy sum': np.asarray(device).sum} if host else {}
  kernels |= {
      'jax sum': lambda: total(device).block_until_ready(),
      'jax [n, 1024] @ [1024, 2]': lambda: matvec(tall, columns).block_until_ready(),
      # Our decoder's layout (kernels [in, out]); XLA:CPU streamed it at about half the rate above.
      'jax [2, 1024] @ [1024, n]': lambda: matvec(rows, wide).block_until_ready(),
  }
  return {name: count * 4 / harness.median_seconds(step, 5) for name, step in kernels.items()}


def bandwidth_floor() -> dict:
  """Our per-token decode time on the large --floor_* model against bytes / bandwidth."""
  n, batch = FLAGS.floor_new_tokens, FLAGS.generate_batch
  fields = hf_sizes(FLAGS.floor_layers, FLAGS.floor_hidden, FLAGS.floor_heads, FLAGS.floor_mlp,
                    FLAGS.floor_vocab, FLAGS.generate_prompt + 2 * n + 16)
  model, params = random_model(fields, 'float32', FLAGS.generate_scan_layers)
  prompts = random_prompts(batch, FLAGS.generate_prompt, FLAGS.floor_vocab)
  short = harness.median_seconds(our_generate_step(model, params, prompts, n),
                                 FLAGS.generate_repeats)
  long = harness.median_seconds(our_generate_step(model, params, prompts, 2 * n),
                                FLAGS.generate_repeats)
  per_token = (long - short) / n
  bandwidths = memory_bandwidth(FLAGS.floor_bandwidth_mib)
  bandwidth = max(bandwidths.values())
  floor = streamed_bytes(params) / bandwidth
  return dict(per_token=per_token, floor=floor, ratio=per_token / floor, bandwidth=bandwidth,
              bandwidths=bandwidths, params=param_count(params), bytes=streamed_bytes(params),
              short=short, long=long)


class ImageVocabulary:
  """The ids `generate` needs for CFG and modality control, in a vocabulary of `size` ids: text
  first, then <mask> and <break>, image codes last. No tokenizer is loaded (speed does not depend
  on what the ids mean, and seqio's vocabularies import TensorFlow, which crashes torch)."""

  def __init__(self, size: int, num_image_codes: int):
    self.vocab_size, self.num_image_codes = size, num_image_codes
    self.first_image_id = size - num_image_codes
    self.num_text = self.first_image_id - 2
    self.mask_id, self.break_id = self.num_text, self.num_text + 1
    self.image_open_id = self.image_close_id = self.break_id
    self.guidance_style, self.sequence_start_ids = 'mask', ()

  def is_image(self, token: int) -> bool:
    return self.first_image_id <= token < self.vocab_size

  def is_text(self, token: int) -> bool:
    return 0 <= token < self.num_text


def cfg_image_rate(fields: dict, dtype: str, images: int, tokens_per_image: int, repeats: int,
                   bandwidth_mib: int, scan_layers: bool) -> dict:
  """Text-to-image sampling with CFG (scale 3, top-p 0.9) on the default device: images/s of ours
  and of the bandwidth floor (every decode step streams all weights but the embedding table)."""
  model, params = random_model(fields, dtype, scan_layers)
  vocab = ImageVocabulary(fields['vocab_size'], min(8192, fields['vocab_size'] // 2))
  text = random_prompts(images, 31, vocab.num_text)  # Ids from 4 up, all text.
  prompts = [row.tolist() + [vocab.break_id] for row in text]  # <break> opens the image.
  config = DecodingConfig(max_new_tokens=tokens_per_image + 1, temperature=1.0, top_p=0.9,
                          guidance_scale=3.0, tokens_per_image=tokens_per_image)
  samples = []
  seconds = harness.median_seconds(
      lambda: samples.append(decoding.generate(model, params, prompts, config, vocab)), repeats)
  tokens = samples[-1].tokens
  codes = np.vectorize(vocab.is_image)(tokens).sum(-1)
  bandwidths = memory_bandwidth(bandwidth_mib, host=False)
  bandwidth = max(bandwidths.values())
  floor_s = config.max_new_tokens * streamed_bytes(params) / bandwidth
  return dict(ours=images / seconds, floor=images / floor_s, ratio=seconds / floor_s,
              seconds=seconds, floor_s=floor_s, bandwidths=bandwidths, bandwidth=bandwidth,
              params=param_count(params), bytes=streamed_bytes(params), shape=tokens.shape,
              codes_ok=bool((codes == tokens_per_image).all()))


def gpu_7b_benchmark() -> str:
  """--gpu_7b: images/s with CFG of CM3Leon-7B-shaped bfloat16 weights against the floor."""
  device = jax.devices()[0]
  if device.platform != 'gpu':
    raise ValueError(f"--gpu_7b needs a GPU; jax's first device is {device}.")
  shape = CHAMELEON_7B
  fields = hf_sizes(**{k: shape[k] for k in shape}, max_length=4096)
  r = cfg_image_rate(fields, 'bfloat16', FLAGS.gpu_images, FLAGS.gpu_tokens_per_image,
                     FLAGS.generate_repeats, FLAGS.floor_bandwidth_mib, FLAGS.generate_scan_layers)
  lines = [
      f'## generate --gpu_7b: text-to-image with CFG (2 streams per image), bfloat16, {device}',
      '',
      f'model: Chameleon, {shape} ({r["params"] / 1e9:.2f} B params, '
      f'{r["bytes"] / 2**30:.1f} GiB streamed per step); {FLAGS.gpu_images} images of '
      f'{FLAGS.gpu_tokens_per_image} codes per call; every sample has exactly that many codes: '
      f'{r["codes_ok"]}; median of {FLAGS.generate_repeats} warm calls; jax {jax.__version__}',
      '',
      '| memory-bound kernel | GB/s |',
      '|---|---|',
      *[f'| {name} | {rate / 1e9:.1f} |' for name, rate in r['bandwidths'].items()],
      '',
      '| | seconds per call | images/s |',
      '|---|---|---|',
      f'| ours | {r["seconds"]:.2f} | {r["ours"]:.3f} |',
      f'| bandwidth floor | {r["floor_s"]:.2f} | {r["floor"]:.3f} |',
  ]
  print('\n'.join(lines))
  return harness.result_line(
      'generate', ours=f'{r["ours"]:.4f}', floor=f'{r["floor"]:.4f}', unit='images/s',
      floor_ratio=f'{r["ratio"]:.3f}', bandwidth_gbs=f'{r["bandwidth"] / 1e9:.1f}')


def load_warning(load: float, threads: int) -> list:
  """A warning line when other processes compete for the cores of a multi-threaded run."""
  if threads == 1 or load + threads <= os.cpu_count() + 0.5:
    return []
  return [f"WARNING: load average {load:.1f} with {threads} threads per side: torch's OpenMP "
          'threads slow down sharply when other processes compete for the cores (on this shared '
          '2-core machine the 2-thread peer ran ~17x slower than with --threads=1), so the ratio '
          'flatters ours; compare with --threads=1 or on an idle machine.']


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
      harness.shapes_line(same['ours_shape'], same['peer_shape']),
      f'the new tokens agree on {same["agree"]:.2%} of positions (digests: ours '
      f'{same["ours_tokens"]}, peer {same["peer_tokens"]})',
      f'XLA_FLAGS={os.environ.get("XLA_FLAGS", "")!r}; load average before: {same["load"]:.2f}',
      *load_warning(same['load'], same['threads']),
      '',
      '| metric | ours (cm3leon_jax) | peer (transformers) | ours/peer |',
      '|---|---|---|---|',
      f'| seconds per call | {same["ours_s"]:.3f} | {same["peer_s"]:.3f} | '
      f'{same["peer_s"] / same["ours_s"]:.2f} |',
      f'| new tokens/s | {same["ours"]:.1f} | {same["peer"]:.1f} | '
      f'{harness.ratio(same["ours"], same["peer"]):.2f} |',
      '',
      f'### bandwidth floor: layers={FLAGS.floor_layers} d={FLAGS.floor_hidden} '
      f'heads={FLAGS.floor_heads} mlp={FLAGS.floor_mlp} vocab={FLAGS.floor_vocab} '
      f'({floor["params"] / 1e6:.1f} M params, {floor["bytes"] / 2**20:.0f} MiB streamed per '
      f'step: all float32 weights but the embedding table), batch={batch}',
      '',
      f'per token (one decode step: {batch} tokens) = (time of {2 * FLAGS.floor_new_tokens} new '
      f'tokens {floor["long"]:.3f} s - '
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


def benchmark() -> str:
  """Our generate against transformers' Chameleon generate, and the bandwidth floor; RESULT line."""
  if FLAGS.gpu_7b:
    return gpu_7b_benchmark()
  threads = harness.torch_threads()
  same = compare_with_peer(threads)
  floor = bandwidth_floor()
  print(generate_table(same, floor))
  return harness.result_line(
      'generate', ours=f'{same["ours"]:.1f}', peer=f'{same["peer"]:.1f}', unit='tokens/s',
      ratio=f'{harness.ratio(same["ours"], same["peer"]):.3f}', agree=f'{same["agree"]:.3f}',
      per_token_ms=f'{floor["per_token"] * 1e3:.3f}', floor_ms=f'{floor["floor"] * 1e3:.3f}',
      floor_ratio=f'{floor["ratio"]:.3f}', bandwidth_gbs=f'{floor["bandwidth"] / 1e9:.1f}',
      ours_tokens=same['ours_tokens'], peer_tokens=same['peer_tokens'],
      ours_shape=same['ours_shape'], peer_shape=same['peer_shape'])
