"""The `decoder` benchmark: forward + backward of our decoder against transformers' OPT.

Forward + backward (loss and gradients of every parameter, no optimizer) of the cm3leon decoder in
float32 against transformers' OPTForCausalLM of the same shape, same batch, same sequence length and
the same number of threads. It also measures this machine's float32 matmul rate with jnp and
reports our model FLOP/s (cm3leon_jax.flops) against it.

The shape flags and the OPT peer here are the `train` benchmark's too.
"""

from absl import flags
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cm3leon_jax import flops
from cm3leon_jax.cli.benchmarks import harness
from cm3leon_jax.models.config import DecoderConfig
from cm3leon_jax.models.decoder import Decoder, init_params
from cm3leon_jax.training.losses import lm_loss

FLAGS = flags.FLAGS


def define_flags():
  """The model shape flags of `decoder` and `train`."""
  flags.DEFINE_integer('layers', 4, 'Transformer blocks.')
  flags.DEFINE_integer('embed_dim', 512, 'Model width d (MLP width is 4*d).')
  flags.DEFINE_integer('heads', 8, 'Attention heads.')
  flags.DEFINE_integer('vocab', 8192, 'Vocabulary size.')
  flags.DEFINE_integer('seq_len', 512, 'Tokens per sequence.')
  flags.DEFINE_integer('batch', 4, 'Sequences per step.')
  # nn.scan was as fast or faster than unrolled layers here (0.78x vs 0.71x the peer with the
  # tuned flags): unrolled, XLA runs independent ops concurrently and they fight over the 2 cores.
  flags.DEFINE_bool('scan_layers', True, 'Stack our blocks with nn.scan (False: unrolled layers).')
  flags.DEFINE_enum('attention_impl', 'blocked', ['xla', 'blocked'],
                    "Our attention: 'blocked' skips the masked triangle (see "
                    'blocked_attention.py).')
  flags.DEFINE_integer('matmul_size', 2048, 'Side of the square float32 matmul timed for the peak.')


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


def our_model_shape(params) -> dict:
  """layers, embed_dim, heads, mlp and vocab of a Decoder, read off its parameters (either
  family, scanned or unrolled)."""
  vocab, width = params['embed']['token'].shape
  if 'layers' in params:
    block = params['layers']
    layers = block['attention']['query']['kernel'].shape[0]
  else:
    layers = sum(name.startswith('layers_') for name in params)
    block = params['layers_0']
  return dict(layers=layers, embed_dim=width,
              heads=block['attention']['query']['kernel'].shape[-2],
              mlp=block['mlp']['wo']['kernel'].shape[-2], vocab=vocab)


def our_shape(params, inputs) -> str:
  """The shape our step ran: its batch [batch, seq_len] and the model its parameters make."""
  batch, seq_len = inputs.shape
  return harness.shape(batch=batch, seq_len=seq_len, **our_model_shape(params))


def opt_shape(model, inputs) -> str:
  """The shape the OPT peer ran: its input ids [batch, seq_len] and its modules' sizes."""
  decoder = model.model.decoder
  batch, seq_len = inputs.shape
  vocab, width = decoder.embed_tokens.weight.shape
  return harness.shape(batch=batch, seq_len=seq_len, layers=len(decoder.layers), embed_dim=width,
                       heads=model.config.num_attention_heads,
                       mlp=decoder.layers[0].fc1.out_features, vocab=vocab)


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
  """(a synchronised training step of our decoder on fixed random parameters and batch, the shape
  it runs)."""
  params = nn.meta.unbox(init_params(Decoder(config), jax.random.key(0)))
  inputs, targets = jnp.asarray(inputs), jnp.asarray(targets)
  step = make_jax_step(config)
  return lambda: jax.block_until_ready(step(params, inputs, targets)), our_shape(params, inputs)


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
  """(training step of the OPT peer, the shape it runs, its attention implementation's name)."""
  model = opt_peer(config)
  inputs, targets = torch_batch(inputs, targets)

  def step():
    # Eager torch runs synchronously on CPU: backward() returns once the gradients exist.
    loss = peer_loss(model, inputs, targets)
    loss.backward()
    model.zero_grad(set_to_none=True)
    return loss

  attn_impl = model.config._attn_implementation  # pylint: disable=protected-access
  return step, opt_shape(model, inputs), attn_impl


def time_against_peer(ours, peer):
  """(median seconds by name, jnp and torch matmul FLOP/s): ours, the peer and both matmul
  probes timed in alternation, so machine load hits them alike."""
  seconds = harness.interleaved_medians(
      {'ours': ours, 'peer': peer, 'jax_matmul': jax_matmul_step(FLAGS.matmul_size),
       'torch_matmul': torch_matmul_step(FLAGS.matmul_size)}, FLAGS.steps, FLAGS.warmup)
  flop = 2 * FLAGS.matmul_size**3
  return seconds, flop / seconds['jax_matmul'], flop / seconds['torch_matmul']


def benchmark() -> str:
  """Our decoder's training step against OPTForCausalLM; returns the RESULT line."""
  threads = harness.torch_threads()
  config = decoder_config()
  inputs, targets = random_batch(FLAGS.batch, FLAGS.seq_len, FLAGS.vocab)
  tokens = FLAGS.batch * FLAGS.seq_len

  ours, ours_shape = jax_decoder_step(config, inputs, targets)
  xla_flops = xla_cost_flops(config, inputs, targets)
  peer, peer_shape, attn_impl = torch_decoder_step(config, inputs, targets)
  seconds, jax_peak, torch_peak = time_against_peer(ours, peer)

  ours_tps, peer_tps = tokens / seconds['ours'], tokens / seconds['peer']
  per_token = flops.training_flops_per_token(config, FLAGS.seq_len)
  per_token_full = flops.training_flops_per_token(config, FLAGS.seq_len, causal=False)
  util = flops.mfu(config, FLAGS.seq_len, ours_tps, jax_peak)
  print(decoder_table(config, threads, attn_impl, seconds['ours'], seconds['peer'], per_token,
                      per_token_full, xla_flops / tokens, jax_peak, torch_peak,
                      harness.shapes_line(ours_shape, peer_shape)))
  return harness.result_line(
      'decoder', ours=f'{ours_tps:.1f}', peer=f'{peer_tps:.1f}', unit='tokens/s',
      ratio=f'{harness.ratio(ours_tps, peer_tps):.3f}', flops_util=f'{util:.3f}',
      ours_shape=ours_shape, peer_shape=peer_shape)


def decoder_table(config, threads, attn_impl, ours_s, peer_s, per_token, per_token_full,
                  xla_per_token, jax_peak, torch_peak, shapes: str) -> str:
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
      shapes,
      f'peer: transformers OPTForCausalLM, attn_implementation={attn_impl}, '
      f'torch {harness.torch_version()}; ours: jax {jax.__version__}',
      f'training FLOPs/token: {per_token / 1e6:.2f} M (MaxText, causal attention halved), '
      f'{per_token_full / 1e6:.2f} M (full attention), {xla_per_token / 1e6:.2f} M (XLA count)',
      matmul_line(jax_peak, torch_peak),
  ]
  return harness.comparison_report(
      header, '| metric | ours (cm3leon_jax) | peer (torch OPT) | ours/peer |', rows)


def _gflops(per_token: float, tokens_per_second: float) -> str:
  return f'{per_token * tokens_per_second / 1e9:.1f}'


def _percent_of(per_token: float, tokens_per_second: float, peak: float) -> str:
  return f'{100 * per_token * tokens_per_second / peak:.1f}%'


def speed_rows(tokens: int, ours_s: float, peer_s: float, per_token: float, jax_peak: float):
  """Step time, tokens/s, model GFLOP/s and MFU rows of a table comparing ours with the peer."""
  ours_tps, peer_tps = tokens / ours_s, tokens / peer_s
  return [
      ('median step time (s)', f'{ours_s:.3f}', f'{peer_s:.3f}', f'{peer_s / ours_s:.3f}'),
      ('tokens/s', f'{ours_tps:.1f}', f'{peer_tps:.1f}',
       f'{harness.ratio(ours_tps, peer_tps):.3f}'),
      ('model GFLOP/s (MaxText, causal attn)', _gflops(per_token, ours_tps),
       _gflops(per_token, peer_tps), ''),
      ('% of jnp matmul peak (MFU)', _percent_of(per_token, ours_tps, jax_peak),
       _percent_of(per_token, peer_tps, jax_peak), ''),
  ]


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
