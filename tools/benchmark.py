"""Throughput benchmarks of cm3leon_jax against a PyTorch peer, in one process, same run.

Usage:
  .venv/bin/python tools/benchmark.py decoder [--layers=4 --embed_dim=512 ...]
  .venv/bin/python tools/benchmark.py train [same shape flags]

Benchmarks (the positional NAME; add new ones to ``BENCHMARKS``):
  decoder: forward + backward (loss and gradients of every parameter, no optimizer) of the cm3leon
    decoder in float32 against transformers' OPTForCausalLM of the same shape, same batch, same
    sequence length and the same number of threads. It also measures this machine's float32 matmul
    rate with jnp and reports our model FLOP/s (cm3leon_jax.flops) against it.
  train: the full training step of our trainer (cm3leon_jax.training.state's jitted step with the
    AdamW + clipping of cm3leon_jax.training.optimizer, donated state, 1-device mesh) against the same OPT
    peer trained by torch.optim.AdamW with gradient-norm clipping: tokens/s of both, the ratio and
    our MFU against the measured jnp matmul peak. Same shape flags as `decoder`.
  pipeline: packed seqio batches/s of the quickstart input pipeline against the batches/s the
    quickstart train step consumes, and Beam preprocessing images/s with 1 and 2 workers (see
    tools/benchmark_pipeline.py).
  generate: greedy new tokens/s of ours against transformers' Chameleon generate, and per-token
    time against the memory-bandwidth floor (see tools/benchmark_generate.py).
  retrieval: ScaNN (tree + asymmetric hashing + reorder) against exact numpy search over 1M x 512
    clustered, L2-normalised embeddings: queries/s of both and ScaNN's recall@10 (see
    tools/benchmark_retrieval.py).
  vqgan: images/s of our jitted float32 VQ-GAN encoding images to codes and decoding codes to
    images, against the taming-transformers PyTorch modules (the oracle of tests/test_vqgan.py) with
    the same weights, config (--vqgan_gin), batch (--vqgan_batch) and threads. torch's OpenMP
    threads slow down sharply when another process competes for the cores (on a shared 2-core
    machine the 2-thread peer ran ~40x slower than with --threads=1), so check the load first.

Each benchmark prints a markdown table and ends with one machine-readable line:
  RESULT <name> ours=<x> peer=<y> unit=<unit> ratio=<ours/peer> ...
(vqgan reports two measurements: ours_encode= peer_encode= ours_decode= peer_decode= unit=images/s
encode_ratio= decode_ratio=).

Both sides are timed in alternation in one process (see `interleaved_medians`). The tool's speed
defaults (XLA flags, nn.scan) and what else was tried are documented at TUNED_XLA_FLAGS and
--scan_layers below.
"""

import os
import statistics
import sys
import time

from absl import app
from absl import flags
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# Running from a checkout without `pip install -e .` still finds the package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from cm3leon_jax import flops  # pylint: disable=g-import-not-at-top
from cm3leon_jax import gin_utils  # pylint: disable=g-import-not-at-top
from cm3leon_jax.training import optimizer as optimizer_lib  # pylint: disable=g-import-not-at-top
from cm3leon_jax import partitioning  # pylint: disable=g-import-not-at-top
from cm3leon_jax.training import state as state_lib  # pylint: disable=g-import-not-at-top
from cm3leon_jax.interop import taming_reference, taming_vqgan  # pylint: disable=g-import-not-at-top
from cm3leon_jax.training.losses import lm_loss  # pylint: disable=g-import-not-at-top
from cm3leon_jax.models.config import DecoderConfig  # pylint: disable=g-import-not-at-top
from cm3leon_jax.models.decoder import Decoder, init_params  # pylint: disable=g-import-not-at-top
from cm3leon_jax.models.vqgan import VQGAN  # pylint: disable=g-import-not-at-top
from cm3leon_jax.models.vqgan_config import VQGANConfig  # pylint: disable=g-import-not-at-top
import benchmark_generate  # pylint: disable=g-import-not-at-top
import benchmark_pipeline  # pylint: disable=g-import-not-at-top  (tools/ is the script's folder)
import benchmark_retrieval  # pylint: disable=g-import-not-at-top

# XLA:CPU flags tuned on jaxlib 0.10 (2-core AMD EPYC, float32), measured by `decoder` against the
# same-run torch peer:
# * --xla_cpu_experimental_ynn_fusion_type=individual_dot: by default XLA:CPU hands YNNPACK whole
#   fusions of a dot plus its elementwise/reduce neighbours. For the attention backward it builds
#   one fusion of dO V^T with the softmax-backward multiply and row reduction, whose dot runs at
#   ~13 GFLOP/s instead of ~180 (about 15% of the step's time). Restricting YNNPACK to plain dots
#   (elementwise ops go back to XLA's loop emitter) cut attention fwd+bwd from ~180 to ~134 ms per
#   layer and raised the step from 0.69x to ~0.78x the peer's tokens/s. No YNNPACK at all ('')
#   gave ~0.75x; 'individual_dot,eltwise' ~0.76x; oneDNN dot fusion ~0.75x; unrolled layers,
#   --xla_cpu_prefer_vector_width=512, --xla_cpu_use_fusion_emitters=false and
#   --xla_cpu_enable_concurrency_optimized_scheduler=false did not help (within +-5% noise).
# The flag names are experimental and XLA aborts on an unknown flag, so they are applied only on the
# jaxlib line they were tuned for (see `xla_flags_for_this_jaxlib`).
TUNED_XLA_FLAGS = '--xla_cpu_experimental_ynn_fusion_type=individual_dot'
TUNED_JAXLIB_PREFIX = '0.10.'

FLAGS = flags.FLAGS
flags.DEFINE_integer('layers', 4, 'Transformer blocks.')
flags.DEFINE_integer('embed_dim', 512, 'Model width d (MLP width is 4*d).')
flags.DEFINE_integer('heads', 8, 'Attention heads.')
flags.DEFINE_integer('vocab', 8192, 'Vocabulary size.')
flags.DEFINE_integer('seq_len', 512, 'Tokens per sequence.')
flags.DEFINE_integer('batch', 4, 'Sequences per step.')
flags.DEFINE_integer('steps', 10, 'Timed steps per side (the median is reported).')
flags.DEFINE_integer('warmup', 2, 'Untimed steps per side first (compilation, allocator warm-up).')
# nn.scan was as fast or faster than unrolled layers here (0.78x vs 0.71x the peer with the tuned
# flags): unrolled, XLA runs independent ops concurrently and they fight over the 2 cores.
flags.DEFINE_bool('scan_layers', True, 'Stack our blocks with nn.scan (False: unrolled layers).')
flags.DEFINE_enum('attention_impl', 'blocked', ['xla', 'blocked'],
                  "Our attention: 'blocked' skips the masked triangle (see blocked_attention.py).")
flags.DEFINE_integer('threads', 0, 'Threads for both sides (0: every core this process may use).')
flags.DEFINE_integer('matmul_size', 2048, 'Side of the square float32 matmul timed for the peak.')
flags.DEFINE_string('vqgan_gin', 'vqgan/tiny.gin',
                    'vqgan: gin file binding %VQGAN_CONFIG (path, or relative to gin/).')
flags.DEFINE_integer('vqgan_batch', 16, 'vqgan: images per encode / decode call.')
flags.DEFINE_string('xla_flags', None,
                    'XLA flags added to $XLA_FLAGS before the backend starts. Default: '
                    f'{TUNED_XLA_FLAGS!r} on jaxlib {TUNED_JAXLIB_PREFIX}x, none otherwise.')


def interleaved_medians(steps_by_name, rounds: int, warmup: int):
  """Median wall time of each named step, timed in alternation: a, b, a, b, ...

  Alternating (rather than all of a, then all of b) exposes both sides to the same background load
  and clock drift, which on a small shared machine moves single timings by tens of percent. Each
  step must synchronise itself before returning.
  """
  for step in steps_by_name.values():
    for _ in range(warmup):
      step()
  times = {name: [] for name in steps_by_name}
  for _ in range(rounds):
    for name, step in steps_by_name.items():
      start = time.perf_counter()
      step()
      times[name].append(time.perf_counter() - start)
  return {name: statistics.median(values) for name, values in times.items()}


def xla_flags_for_this_jaxlib() -> str:
  """--xla_flags if given, else the tuned flags when this jaxlib is the line they were tuned on."""
  if FLAGS.xla_flags is not None:
    return FLAGS.xla_flags
  import jaxlib  # pylint: disable=g-import-not-at-top
  return TUNED_XLA_FLAGS if jaxlib.__version__.startswith(TUNED_JAXLIB_PREFIX) else ''


def configure_backend():
  """Set XLA flags and the thread budget; must run before JAX's backend starts (first array)."""
  given = os.environ.get('XLA_FLAGS', '')
  # A flag the caller already set in $XLA_FLAGS wins over ours.
  extra = [f for f in xla_flags_for_this_jaxlib().split() if f.split('=')[0] not in given]
  os.environ['XLA_FLAGS'] = ' '.join([given, *extra]).strip()
  if FLAGS.threads:
    # XLA:CPU sizes its thread pool from the CPUs this process may run on and has no flag for it,
    # so --threads pins the process (torch gets the same count below).
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:FLAGS.threads])


def thread_count() -> int:
  """Threads each framework uses: the CPUs this process may run on (see configure_backend)."""
  return len(os.sched_getaffinity(0))


def random_batch(batch: int, seq_len: int, vocab: int):
  """(inputs, targets) as int numpy arrays: one random sequence of seq_len+1 tokens, shifted."""
  tokens = np.random.default_rng(0).integers(0, vocab, (batch, seq_len + 1), dtype=np.int32)
  return tokens[:, :-1], tokens[:, 1:]


def jax_matmul_step(size: int):
  """A synchronised float32 [size, size] @ [size, size] jitted jnp matmul (2 * size**3 FLOPs)."""
  a = jax.random.normal(jax.random.key(1), (size, size), jnp.float32)
  b = jax.random.normal(jax.random.key(2), (size, size), jnp.float32)
  matmul = jax.jit(jnp.matmul)
  return lambda: matmul(a, b).block_until_ready()


def torch_matmul_step(size: int):
  """The same matmul in torch (context: the peer's BLAS may be faster or slower than XLA's)."""
  import torch  # pylint: disable=g-import-not-at-top
  a, b = torch.randn(size, size), torch.randn(size, size)
  return lambda: torch.matmul(a, b)


def decoder_config() -> DecoderConfig:
  """Our decoder's benchmark shape: float32 params and compute, no remat."""
  return DecoderConfig(
      family='cm3leon', vocab_size=FLAGS.vocab, num_layers=FLAGS.layers,
      embed_dim=FLAGS.embed_dim, num_heads=FLAGS.heads, max_length=FLAGS.seq_len,
      activation='relu', param_dtype='float32', dtype='float32', scan_layers=FLAGS.scan_layers,
      remat_policy='none', attention_impl=FLAGS.attention_impl,
      # Random output projections, as the peer has, so no gradient is trivially zero.
      zero_init_residual=False)


def make_jax_step(config: DecoderConfig):
  """A jitted (params, inputs, targets) -> (loss, grads) of our decoder."""
  model = Decoder(config)

  def loss_fn(params, inputs, targets):
    logits = model.apply({'params': params}, inputs)
    return lm_loss(logits, targets)[0]

  # No donate_argnums: every step reuses the same params and batch (there is no optimizer update
  # to write into), so there is no buffer to give back; a trainer should donate its train state.
  return jax.jit(jax.value_and_grad(loss_fn))


def jax_decoder_step(config: DecoderConfig, inputs, targets):
  """A synchronised training step of our decoder on fixed random parameters and batch."""
  params = nn.meta.unbox(init_params(Decoder(config), jax.random.key(0)))
  inputs, targets = jnp.asarray(inputs), jnp.asarray(targets)
  step = make_jax_step(config)
  return lambda: jax.block_until_ready(step(params, inputs, targets))


def xla_cost_flops(config: DecoderConfig, inputs, targets) -> float:
  """FLOPs of one training step by XLA's HLO cost analysis (every op, masked attention in full).

  The analysis counts a while loop's body once, so it runs on the unrolled twin of the config
  (lowered from shapes only; nothing is compiled or executed).
  """
  unrolled = config.replace(scan_layers=False)
  shapes = jax.eval_shape(
      lambda: nn.meta.unbox(init_params(Decoder(unrolled), jax.random.key(0))))
  cost = make_jax_step(unrolled).lower(shapes, inputs, targets).cost_analysis()
  if isinstance(cost, (list, tuple)):  # Older jax returns one dict per device.
    cost = cost[0]
  return float(cost.get('flops', float('nan'))) if cost else float('nan')


def opt_peer(config: DecoderConfig):
  """transformers' OPTForCausalLM with our decoder's shape and numerics (eval mode: no dropout)."""
  import torch  # pylint: disable=g-import-not-at-top
  from transformers import OPTConfig, OPTForCausalLM  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  peer_config = OPTConfig(
      vocab_size=config.vocab_size, hidden_size=config.embed_dim,
      num_hidden_layers=config.num_layers, ffn_dim=config.hidden_dim,
      num_attention_heads=config.num_heads, max_position_embeddings=config.max_length,
      word_embed_proj_dim=config.embed_dim, do_layer_norm_before=True, enable_bias=False,
      layer_norm_elementwise_affine=False, activation_function='relu', dropout=0.0,
      attention_dropout=0.0, layerdrop=0.0, tie_word_embeddings=False, use_cache=False)
  model = OPTForCausalLM(peer_config).to(torch.float32)
  return model.eval()


def torch_batch(inputs, targets):
  """The numpy batch as torch int64 tensors: inputs [batch, len], targets flattened."""
  import torch  # pylint: disable=g-import-not-at-top
  return (torch.from_numpy(inputs.astype(np.int64)),
          torch.from_numpy(targets.astype(np.int64)).reshape(-1))


def peer_loss(model, inputs, targets):
  """Mean next-token cross-entropy of the OPT peer on exactly our targets (no internal shift)."""
  import torch  # pylint: disable=g-import-not-at-top
  logits = model(input_ids=inputs, use_cache=False).logits
  return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets)


def torch_decoder_step(config: DecoderConfig, inputs, targets):
  """(training step of the OPT peer, its attention implementation's name)."""
  model = opt_peer(config)
  inputs, targets = torch_batch(inputs, targets)

  def step():
    # Eager torch runs synchronously on CPU: backward() returns once the gradients exist.
    loss = peer_loss(model, inputs, targets)
    loss.backward()
    model.zero_grad(set_to_none=True)
    return loss

  return step, model.config._attn_implementation  # pylint: disable=protected-access


def time_against_peer(ours, peer):
  """(median seconds by name, jnp and torch matmul FLOP/s): ours, the peer and both matmul
  probes timed in alternation, so machine load hits them alike."""
  seconds = interleaved_medians(
      {'ours': ours, 'peer': peer, 'jax_matmul': jax_matmul_step(FLAGS.matmul_size),
       'torch_matmul': torch_matmul_step(FLAGS.matmul_size)}, FLAGS.steps, FLAGS.warmup)
  flop = 2 * FLAGS.matmul_size**3
  return seconds, flop / seconds['jax_matmul'], flop / seconds['torch_matmul']


def decoder_benchmark() -> str:
  """Our decoder's training step against OPTForCausalLM; returns the RESULT line."""
  import torch  # pylint: disable=g-import-not-at-top
  threads = thread_count()
  torch.set_num_threads(threads)
  config = decoder_config()
  inputs, targets = random_batch(FLAGS.batch, FLAGS.seq_len, FLAGS.vocab)
  tokens = FLAGS.batch * FLAGS.seq_len

  ours = jax_decoder_step(config, inputs, targets)
  xla_flops = xla_cost_flops(config, inputs, targets)
  peer, attn_impl = torch_decoder_step(config, inputs, targets)
  seconds, jax_peak, torch_peak = time_against_peer(ours, peer)

  ours_tps, peer_tps = tokens / seconds['ours'], tokens / seconds['peer']
  per_token = flops.training_flops_per_token(config, FLAGS.seq_len)
  per_token_full = flops.training_flops_per_token(config, FLAGS.seq_len, causal=False)
  util = flops.mfu(config, FLAGS.seq_len, ours_tps, jax_peak)
  print(decoder_table(config, threads, attn_impl, seconds['ours'], seconds['peer'], per_token,
                      per_token_full, xla_flops / tokens, jax_peak, torch_peak))
  return (f'RESULT decoder ours={ours_tps:.1f} peer={peer_tps:.1f} unit=tokens/s '
          f'ratio={ours_tps / peer_tps:.3f} flops_util={util:.3f}')


def decoder_table(config, threads, attn_impl, ours_s, peer_s, per_token, per_token_full,
                  xla_per_token, jax_peak, torch_peak) -> str:
  """The decoder benchmark's markdown report."""
  tokens = FLAGS.batch * FLAGS.seq_len
  ours_tps, peer_tps = tokens / ours_s, tokens / peer_s
  rows = speed_rows(tokens, ours_s, peer_s, per_token, jax_peak) + [
      ('model GFLOP/s (attn counted in full)', _gflops(per_token_full, ours_tps),
       _gflops(per_token_full, peer_tps), ''),
      ('% of jnp matmul peak (attn in full)', _percent_of(per_token_full, ours_tps, jax_peak),
       _percent_of(per_token_full, peer_tps, jax_peak), ''),
      ('GFLOP/s by XLA cost analysis of our step', _gflops(xla_per_token, ours_tps),
       _gflops(xla_per_token, peer_tps), ''),
  ]
  header = [
      f'## decoder: forward+backward, float32, {threads} threads',
      '',
      shape_line(config),
      f'peer: transformers OPTForCausalLM, attn_implementation={attn_impl}, '
      f'torch {_torch_version()}; ours: jax {jax.__version__}',
      f'training FLOPs/token: {per_token / 1e6:.2f} M (MaxText, causal attention halved), '
      f'{per_token_full / 1e6:.2f} M (full attention), {xla_per_token / 1e6:.2f} M (XLA count)',
      matmul_line(jax_peak, torch_peak),
  ]
  return comparison_report(header, '| metric | ours (cm3leon_jax) | peer (torch OPT) | ours/peer |',
                           rows)


def _gflops(per_token: float, tokens_per_second: float) -> str:
  return f'{per_token * tokens_per_second / 1e9:.1f}'


def _percent_of(per_token: float, tokens_per_second: float, peak: float) -> str:
  return f'{100 * per_token * tokens_per_second / peak:.1f}%'


def speed_rows(tokens: int, ours_s: float, peer_s: float, per_token: float, jax_peak: float):
  """Step time, tokens/s, model GFLOP/s and MFU rows of a table comparing ours with the peer."""
  ours_tps, peer_tps = tokens / ours_s, tokens / peer_s
  return [
      ('median step time (s)', f'{ours_s:.3f}', f'{peer_s:.3f}', f'{peer_s / ours_s:.3f}'),
      ('tokens/s', f'{ours_tps:.1f}', f'{peer_tps:.1f}', f'{ours_tps / peer_tps:.3f}'),
      ('model GFLOP/s (MaxText, causal attn)', _gflops(per_token, ours_tps),
       _gflops(per_token, peer_tps), ''),
      ('% of jnp matmul peak (MFU)', _percent_of(per_token, ours_tps, jax_peak),
       _percent_of(per_token, peer_tps, jax_peak), ''),
  ]


def comparison_report(header_lines, columns: str, rows) -> str:
  """A benchmark's markdown report: its header lines, XLA_FLAGS, then the rows under `columns`."""
  separator = '|' + '---|' * columns.count(' | ') + '---|'
  lines = list(header_lines) + [f'XLA_FLAGS={os.environ.get("XLA_FLAGS", "")!r}', '', columns,
                                separator]
  return '\n'.join(lines + [f'| {" | ".join(row)} |' for row in rows])


def train_optimizer_config() -> optimizer_lib.OptimizerConfig:
  """Our AdamW and clipping defaults at a constant rate, which torch's fixed-rate AdamW matches."""
  return optimizer_lib.OptimizerConfig(warmup_steps=0, schedule='constant')


def seqio_batch(inputs, targets):
  """seqio's decoder features for unpacked rows: one segment per row, every target weighted."""
  ones = np.ones_like(inputs)
  positions = np.broadcast_to(np.arange(inputs.shape[1], dtype=inputs.dtype), inputs.shape)
  return {'decoder_input_tokens': inputs, 'decoder_target_tokens': targets,
          'decoder_loss_weights': ones, 'decoder_segment_ids': ones,
          'decoder_positions': positions}


def jax_train_step(config: DecoderConfig, opt_config: optimizer_lib.OptimizerConfig, inputs,
                   targets):
  """(a synchronised step of our trainer, (parameter count, how many of them are decayed)).

  Built as cm3leon_jax.train builds it: a 1-device mesh, the state initialised in its sharded
  layout and donated to the jitted step, which carries it from call to call.
  """
  mesh = partitioning.make_mesh(partitioning.MeshConfig(), jax.devices()[:1])
  model = Decoder(config)
  total_steps = FLAGS.warmup + FLAGS.steps  # Only sizes the schedule, which is constant here.
  optimizer = optimizer_lib.make_optimizer(opt_config, total_steps)
  schedule = optimizer_lib.learning_rate_schedule(opt_config, total_steps)
  state, shardings = state_lib.init_train_state(model, optimizer, mesh)
  train_step = state_lib.jit_train_step(
      state_lib.make_train_step(model, optimizer, schedule, state_lib.StepConfig()), mesh,
      shardings)
  batch = jax.device_put(seqio_batch(inputs, targets), state_lib.batch_sharding(mesh))
  leaves = jax.tree.leaves(state.params)
  counts = (sum(p.size for p in leaves), sum(p.size for p in leaves if p.ndim >= 2))
  carried = {'state': state}

  def step():
    carried['state'], metrics = train_step(carried['state'], batch)
    return jax.block_until_ready((carried['state'], metrics))

  return step, counts


def torch_train_step(config: DecoderConfig, opt_config: optimizer_lib.OptimizerConfig, inputs,
                     targets):
  """(a step of the OPT peer trained by torch.optim.AdamW with clipping, its parameter count)."""
  import torch  # pylint: disable=g-import-not-at-top
  model = opt_peer(config)
  # Every peer parameter is a matrix (no biases, no affine norms), so decaying all of them is what
  # our optimizer's matrices-only mask does too (the table shows both counts).
  optimizer = torch.optim.AdamW(
      model.parameters(), lr=opt_config.peak_learning_rate, betas=(opt_config.b1, opt_config.b2),
      eps=opt_config.eps, weight_decay=opt_config.weight_decay)
  inputs, targets = torch_batch(inputs, targets)

  def step():
    optimizer.zero_grad(set_to_none=True)
    loss = peer_loss(model, inputs, targets)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), opt_config.clip_norm)
    optimizer.step()
    return loss

  return step, sum(p.numel() for p in model.parameters())


def train_benchmark() -> str:
  """Our trainer's full step against OPT + torch AdamW; returns the RESULT line."""
  import torch  # pylint: disable=g-import-not-at-top
  threads = thread_count()
  torch.set_num_threads(threads)
  config, opt_config = decoder_config(), train_optimizer_config()
  inputs, targets = random_batch(FLAGS.batch, FLAGS.seq_len, FLAGS.vocab)
  tokens = FLAGS.batch * FLAGS.seq_len

  ours, ours_params = jax_train_step(config, opt_config, inputs, targets)
  peer, peer_params = torch_train_step(config, opt_config, inputs, targets)
  seconds, jax_peak, torch_peak = time_against_peer(ours, peer)

  ours_tps, peer_tps = tokens / seconds['ours'], tokens / seconds['peer']
  util = flops.mfu(config, FLAGS.seq_len, ours_tps, jax_peak)
  print(train_table(config, opt_config, threads, seconds, ours_params, peer_params, jax_peak,
                    torch_peak))
  return (f'RESULT train ours={ours_tps:.1f} peer={peer_tps:.1f} unit=tokens/s '
          f'ratio={ours_tps / peer_tps:.3f} mfu={util:.3f}')


def train_table(config, opt_config, threads, seconds, ours_params, peer_params, jax_peak,
                torch_peak) -> str:
  """The train benchmark's markdown report."""
  per_token = flops.training_flops_per_token(config, FLAGS.seq_len)
  rows = speed_rows(FLAGS.batch * FLAGS.seq_len, seconds['ours'], seconds['peer'], per_token,
                    jax_peak)
  total, decayed = ours_params
  header = [
      f'## train: full training step (forward, backward, clip, AdamW update), float32, '
      f'{threads} threads',
      '',
      shape_line(config),
      f'optimizer (both): AdamW lr={opt_config.peak_learning_rate:g} constant, '
      f'betas=({opt_config.b1:g}, {opt_config.b2:g}), eps={opt_config.eps:g}, '
      f'weight_decay={opt_config.weight_decay:g}, global-norm clip {opt_config.clip_norm:g}',
      f'ours: cm3leon_jax.training.state.jit_train_step on a 1-device mesh, state donated, jax '
      f'{jax.__version__}; {total} params ({decayed} decayed)',
      f'peer: transformers OPTForCausalLM + torch.optim.AdamW + clip_grad_norm_, torch '
      f'{_torch_version()}; {peer_params} params (all decayed)',
      f'training FLOPs/token: {per_token / 1e6:.2f} M (MaxText, causal attention halved; the '
      f'optimizer update is not counted)',
      matmul_line(jax_peak, torch_peak),
  ]
  return comparison_report(
      header, '| metric | ours (cm3leon_jax trainer) | peer (torch OPT + AdamW) | ours/peer |',
      rows)


def shape_line(config: DecoderConfig) -> str:
  """The model shape and timing settings, as the decoder and train tables print them."""
  return (f'shape: layers={config.num_layers} d={config.embed_dim} heads={config.num_heads} '
          f'mlp={config.hidden_dim} vocab={config.vocab_size} seq_len={FLAGS.seq_len} '
          f'batch={FLAGS.batch} ({FLAGS.batch * FLAGS.seq_len} tokens/step); '
          f'scan_layers={config.scan_layers}; steps={FLAGS.steps} (median) after '
          f'warmup={FLAGS.warmup}')


def matmul_line(jax_peak: float, torch_peak: float) -> str:
  """Both frameworks' measured matmul rates; jnp's is the MFU denominator."""
  return (f'float32 {FLAGS.matmul_size}^3 matmul: jnp {jax_peak / 1e9:.1f} GFLOP/s (the peak used '
          f'below), torch {torch_peak / 1e9:.1f} GFLOP/s')


def _torch_version() -> str:
  import torch  # pylint: disable=g-import-not-at-top
  return torch.__version__


def vqgan_steps(config: VQGANConfig, images: np.ndarray, codes: np.ndarray):
  """Synchronised encode / decode steps of ours and the peer (same weights), and code agreement."""
  import torch  # pylint: disable=g-import-not-at-top
  peer = taming_reference.build_vqmodel(config)
  params = taming_vqgan.params_from_torch_state_dict(
      {k: v.numpy() for k, v in peer.state_dict().items()}, config)
  model = VQGAN(config)
  encode = jax.jit(lambda p, x: model.apply({'params': p}, x, method=VQGAN.encode_to_codes))
  decode = jax.jit(lambda p, c: model.apply({'params': p}, c, method=VQGAN.decode_codes))
  images_j, codes_j = jnp.asarray(images), jnp.asarray(codes)
  # Each side gets its native layout (NHWC / NCHW), prepared outside the timed steps.
  images_t = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
  codes_t = torch.from_numpy(codes.astype(np.int64))

  @torch.no_grad()
  def peer_encode():
    return peer.quantize(peer.quant_conv(peer.encoder(images_t)))[2][2]

  @torch.no_grad()
  def peer_decode():
    z_q = peer.quantize.embedding(codes_t).permute(0, 3, 1, 2)
    return peer.decoder(peer.post_quant_conv(z_q))

  agreement = float(np.mean(np.asarray(encode(params, images_j)) == peer_encode().numpy()))
  steps = {
      'ours_encode': lambda: encode(params, images_j).block_until_ready(),
      'peer_encode': peer_encode,
      'ours_decode': lambda: decode(params, codes_j).block_until_ready(),
      'peer_decode': peer_decode,
  }
  return steps, agreement


def vqgan_benchmark() -> str:
  """Our VQ-GAN's encode and decode against taming's PyTorch modules; returns the RESULT line."""
  import torch  # pylint: disable=g-import-not-at-top
  threads = thread_count()
  torch.set_num_threads(threads)
  config = gin_utils.vqgan_config([FLAGS.vqgan_gin])
  rng = np.random.default_rng(0)
  side, batch = config.resolution, FLAGS.vqgan_batch
  images = rng.uniform(-1, 1, (batch, side, side, config.in_channels)).astype(np.float32)
  codes = rng.integers(0, config.n_embed, (batch, config.latent_size, config.latent_size),
                       dtype=np.int32)
  steps, agreement = vqgan_steps(config, images, codes)
  seconds = interleaved_medians(steps, FLAGS.steps, FLAGS.warmup)
  rate = {name: batch / s for name, s in seconds.items()}
  print(vqgan_table(config, threads, seconds, rate, agreement))
  return (f'RESULT vqgan ours_encode={rate["ours_encode"]:.2f} '
          f'peer_encode={rate["peer_encode"]:.2f} ours_decode={rate["ours_decode"]:.2f} '
          f'peer_decode={rate["peer_decode"]:.2f} unit=images/s '
          f'encode_ratio={rate["ours_encode"] / rate["peer_encode"]:.3f} '
          f'decode_ratio={rate["ours_decode"] / rate["peer_decode"]:.3f}')


def vqgan_table(config: VQGANConfig, threads: int, seconds, rate, agreement: float) -> str:
  """The vqgan benchmark's markdown report."""
  lines = [
      f'## vqgan: encode (images -> codes) and decode (codes -> images), float32, '
      f'{threads} threads',
      '',
      f'config: {FLAGS.vqgan_gin} ({config.resolution}x{config.resolution} -> '
      f'{config.latent_size}x{config.latent_size} codes of {config.n_embed}, ch={config.ch}, '
      f'ch_mult={list(config.ch_mult)}, num_res_blocks={config.num_res_blocks}, '
      f'attn_resolutions={list(config.attn_resolutions)}); batch={FLAGS.vqgan_batch}; '
      f'steps={FLAGS.steps} (median) after warmup={FLAGS.warmup}',
      f'peer: taming-transformers modules, torch {_torch_version()}, eval, no_grad; ours: jax '
      f'{jax.__version__}, jitted; same weights, codes agree on {agreement:.2%} of positions',
  ]
  rows = []
  for step in ('encode', 'decode'):
    ours, peer = f'ours_{step}', f'peer_{step}'
    rows.append((step, f'{seconds[ours]:.4f}', f'{seconds[peer]:.4f}', f'{rate[ours]:.2f}',
                 f'{rate[peer]:.2f}', f'{rate[ours] / rate[peer]:.3f}'))
  return comparison_report(
      lines, '| step | ours (s) | peer (s) | ours images/s | peer images/s | ours/peer |', rows)


BENCHMARKS = {
    'decoder': decoder_benchmark,
    'train': train_benchmark,
    'vqgan': vqgan_benchmark,
    'pipeline': benchmark_pipeline.pipeline_benchmark,
    'retrieval': benchmark_retrieval.retrieval_benchmark,
    'generate': benchmark_generate.generate_benchmark,
}


def main(argv):
  if len(argv) != 2 or argv[1] not in BENCHMARKS:
    raise app.UsageError(f'Give one benchmark NAME from {sorted(BENCHMARKS)}; got {argv[1:]}.')
  configure_backend()
  print(BENCHMARKS[argv[1]](), flush=True)


if __name__ == '__main__':
  app.run(main)
