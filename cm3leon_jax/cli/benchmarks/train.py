"""The `train` benchmark: our trainer's full step against OPT trained by torch's AdamW.

The full training step of our trainer (cm3leon_jax.training.state's jitted step with the AdamW +
clipping of cm3leon_jax.training.optimizer, donated state, 1-device mesh) against the same OPT peer
as `decoder` trained by torch.optim.AdamW with gradient-norm clipping: tokens/s of both, the ratio
and our MFU against the measured jnp matmul peak. Same shape flags as `decoder`.
"""

from absl import flags
import jax
import numpy as np

from cm3leon_jax import flops
from cm3leon_jax import partitioning
from cm3leon_jax.cli.benchmarks import decoder
from cm3leon_jax.cli.benchmarks import harness
from cm3leon_jax.models.config import DecoderConfig
from cm3leon_jax.models.decoder import Decoder
from cm3leon_jax.training import optimizer as optimizer_lib
from cm3leon_jax.training import state as state_lib

FLAGS = flags.FLAGS


def define_flags():
  """None of its own: `train` reads the shape flags of `decoder`."""


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
  """(a synchronised step of our trainer, the shape it runs, (parameter count, how many of them
  are decayed)).

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
  shape = decoder.our_shape(state.params, batch['decoder_input_tokens'])
  carried = {'state': state}

  def step():
    carried['state'], metrics = train_step(carried['state'], batch)
    return jax.block_until_ready((carried['state'], metrics))

  return step, shape, counts


def torch_train_step(config: DecoderConfig, opt_config: optimizer_lib.OptimizerConfig, inputs,
                     targets):
  """(a step of the OPT peer trained by torch.optim.AdamW with clipping, the shape it runs, its
  parameter count)."""
  import torch  # pylint: disable=g-import-not-at-top
  model = decoder.opt_peer(config)
  # Every peer parameter is a matrix (no biases, no affine norms), so decaying all of them is what
  # our optimizer's matrices-only mask does too (the table shows both counts).
  optimizer = torch.optim.AdamW(
      model.parameters(), lr=opt_config.peak_learning_rate, betas=(opt_config.b1, opt_config.b2),
      eps=opt_config.eps, weight_decay=opt_config.weight_decay)
  inputs, targets = decoder.torch_batch(inputs, targets)

  def step():
    optimizer.zero_grad(set_to_none=True)
    loss = decoder.peer_loss(model, inputs, targets)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), opt_config.clip_norm)
    optimizer.step()
    return loss

  return step, decoder.opt_shape(model, inputs), sum(p.numel() for p in model.parameters())


def benchmark() -> str:
  """Our trainer's full step against OPT + torch AdamW; returns the RESULT line."""
  threads = harness.torch_threads()
  config, opt_config = decoder.decoder_config(), train_optimizer_config()
  inputs, targets = decoder.random_batch(FLAGS.batch, FLAGS.seq_len, FLAGS.vocab)
  tokens = FLAGS.batch * FLAGS.seq_len

  ours, ours_shape, ours_params = jax_train_step(config, opt_config, inputs, targets)
  peer, peer_shape, peer_params = torch_train_step(config, opt_config, inputs, targets)
  seconds, jax_peak, torch_peak = decoder.time_against_peer(ours, peer)

  ours_tps, peer_tps = tokens / seconds['ours'], tokens / seconds['peer']
  util = flops.mfu(config, FLAGS.seq_len, ours_tps, jax_peak)
  print(train_table(config, opt_config, threads, seconds, ours_params, peer_params, jax_peak,
                    torch_peak, harness.shapes_line(ours_shape, peer_shape)))
  return harness.result_line(
      'train', ours=f'{ours_tps:.1f}', peer=f'{peer_tps:.1f}', unit='tokens/s',
      ratio=f'{harness.ratio(ours_tps, peer_tps):.3f}', mfu=f'{util:.3f}',
      ours_shape=ours_shape, peer_shape=peer_shape)


def train_table(config, opt_config, threads, seconds, ours_params, peer_params, jax_peak,
                torch_peak, shapes: str) -> str:
  """The train benchmark's markdown report."""
  per_token = flops.training_flops_per_token(config, FLAGS.seq_len)
  rows = decoder.speed_rows(FLAGS.batch * FLAGS.seq_len, seconds['ours'], seconds['peer'],
                            per_token, jax_peak)
  total, decayed = ours_params
  header = [
      f'## train: full training step (forward, backward, clip, AdamW update), float32, '
      f'{threads} threads',
      '',
      decoder.shape_line(config),
      shapes,
      f'optimizer (both): AdamW lr={opt_config.peak_learning_rate:g} constant, '
      f'betas=({opt_config.b1:g}, {opt_config.b2:g}), eps={opt_config.eps:g}, '
      f'weight_decay={opt_config.weight_decay:g}, global-norm clip {opt_config.clip_norm:g}',
      f'ours: cm3leon_jax.training.state.jit_train_step on a 1-device mesh, state donated, jax '
      f'{jax.__version__}; {total} params ({decayed} decayed)',
      f'peer: transformers OPTForCausalLM + torch.optim.AdamW + clip_grad_norm_, torch '
      f'{harness.torch_version()}; {peer_params} params (all decayed)',
      f'training FLOPs/token: {per_token / 1e6:.2f} M (MaxText, causal attention halved; the '
      f'optimizer update is not counted)',
      decoder.matmul_line(jax_peak, torch_peak),
  ]
  return harness.comparison_report(
      header, '| metric | ours (cm3leon_jax trainer) | peer (torch OPT + AdamW) | ours/peer |',
      rows)
