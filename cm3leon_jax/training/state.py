"""The train state, the train and eval steps, and their shardings on a device mesh.

The train step takes seqio decoder features (``decoder_input_tokens``, ``decoder_target_tokens``,
``decoder_loss_weights``, ``decoder_segment_ids``, ``decoder_positions``) and:

* splits the batch into ``microbatches`` and accumulates gradients over them with ``lax.scan``
  (the loss is normalised by the whole batch's weight, so any split gives the same update);
* computes bf16 (or the model's dtype) activations from fp32 master weights (``param_dtype``);
* returns metrics: loss, cross-entropy, z-loss, text and image token losses, gradient norm,
  learning rate and the number of weighted tokens.

``jit_train_step`` compiles it with explicit in/out shardings and a donated state (t5x's pjit
contract): the same function runs on one CPU, a forced 8-device CPU mesh and a TPU pod.
"""

import dataclasses
from typing import Any, Callable, Dict, Tuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from cm3leon_jax import partitioning
from cm3leon_jax.training.losses import token_losses
from cm3leon_jax.models.decoder import Decoder, init_params

Batch = Dict[str, jax.Array]
BATCH_FEATURES = ('decoder_input_tokens', 'decoder_target_tokens', 'decoder_loss_weights',
                  'decoder_segment_ids', 'decoder_positions')


@flax.struct.dataclass
class TrainState:
  """Everything a resumed run needs besides the data iterator."""

  step: jax.Array
  params: Any
  opt_state: Any


@dataclasses.dataclass(frozen=True)
class StepConfig:
  """How the train step computes its loss.

  Attributes:
    microbatches: gradient accumulation: the batch is processed in this many equal slices.
    z_loss: coefficient of the z-loss (log Z)^2 (Chameleon: 1e-5; 0 disables it).
    first_image_id, num_image_codes: the image-token id range, for the per-modality losses.
  """

  microbatches: int = 1
  z_loss: float = 0.0
  first_image_id: int = 0
  num_image_codes: int = 0


def _weighted_sums(model: Decoder, params, batch: Batch, config: StepConfig):
  """(sum of weighted per-token losses, aux sums) of one (micro)batch."""
  logits = model.apply({'params': params}, batch['decoder_input_tokens'],
                       batch['decoder_positions'], batch['decoder_segment_ids'])
  targets = batch['decoder_target_tokens']
  weights = batch['decoder_loss_weights'].astype(jnp.float32)
  cross_entropy, z_term = token_losses(logits, targets, config.z_loss)
  is_image = (targets >= config.first_image_id) & (
      targets < config.first_image_id + config.num_image_codes)
  image_weights = weights * is_image
  text_weights = weights - image_weights
  aux = {'weight': weights.sum(), 'cross_entropy': (weights * cross_entropy).sum(),
         'z_loss': (weights * z_term).sum(),
         'text_loss': (text_weights * cross_entropy).sum(), 'text_weight': text_weights.sum(),
         'image_loss': (image_weights * cross_entropy).sum(), 'image_weight': image_weights.sum()}
  return (weights * (cross_entropy + z_term)).sum(), aux


def _split_microbatches(batch: Batch, count: int) -> Batch:
  def split(x):
    if x.shape[0] % count:
      raise ValueError(f'Batch size {x.shape[0]} is not divisible by microbatches={count}.')
    return x.reshape((count, x.shape[0] // count) + x.shape[1:])
  return jax.tree.map(split, batch)


def _accumulated_gradients(model: Decoder, params, batch: Batch, config: StepConfig):
  """Gradients and aux sums of the whole batch, accumulated over microbatches."""
  grad_fn = jax.grad(lambda p, b: _weighted_sums(model, p, b, config), has_aux=True)
  if config.microbatches == 1:
    return grad_fn(params, batch)

  def accumulate(carry, microbatch):
    grads, aux = grad_fn(params, microbatch)
    return jax.tree.map(jnp.add, carry, (grads, aux)), None

  zeros = jax.eval_shape(grad_fn, params, jax.tree.map(lambda x: x[0], _split_microbatches(
      batch, config.microbatches)))
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), zeros)
  (grads, aux), _ = jax.lax.scan(accumulate, zeros, _split_microbatches(batch, config.microbatches))
  return grads, aux


def _metrics(aux) -> Dict[str, jax.Array]:
  """Means from the weighted sums (an all-padding batch gives 0, not NaN)."""
  mean = lambda key, weight: aux[key] / jnp.maximum(aux[weight], 1e-8)
  return {'loss': (aux['cross_entropy'] + aux['z_loss']) / jnp.maximum(aux['weight'], 1e-8),
          'cross_entropy': mean('cross_entropy', 'weight'), 'z_loss': mean('z_loss', 'weight'),
          'text_loss': mean('text_loss', 'text_weight'),
          'image_loss': mean('image_loss', 'image_weight'), 'tokens': aux['weight']}


def make_train_step(model: Decoder, optimizer: optax.GradientTransformation,
                    schedule: optax.Schedule, config: StepConfig) -> Callable:
  """(state, batch) -> (new state, metrics), not yet jitted."""

  def train_step(state: TrainState, batch: Batch):
    grads, aux = _accumulated_gradients(model, state.params, batch, config)
    # Gradients of the summed loss, normalised once by the whole batch's weight.
    grads = jax.tree.map(lambda g: g / jnp.maximum(aux['weight'], 1e-8), grads)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(_metrics(aux), grad_norm=optax.tree.norm(grads),
                   learning_rate=schedule(state.step))
    return TrainState(state.step + 1, params, opt_state), metrics

  return train_step


def make_eval_step(model: Decoder, config: StepConfig) -> Callable:
  """(params, batch) -> weighted sums (add them over batches, then `eval_metrics`)."""
  return lambda params, batch: _weighted_sums(model, params, batch, config)[1]


def eval_metrics(summed_aux) -> Dict[str, float]:
  """Validation metrics from the eval step's sums over every batch."""
  return {k: float(v) for k, v in _metrics(summed_aux).items()}


def abstract_train_state(model: Decoder, optimizer: optax.GradientTransformation,
                         mesh) -> Tuple[TrainState, TrainState]:
  """(shape-only TrainState, its NamedShardings), from the model's logical axis names."""
  boxed = jax.eval_shape(lambda: init_params(model, jax.random.key(0)))
  param_shardings = partitioning.logical_shardings(boxed, mesh)
  params = nn.meta.unbox(boxed)
  opt_state = jax.eval_shape(optimizer.init, params)
  # Optimizer moments mirror the parameters; scalars (counts) are replicated.
  opt_shardings = optax.tree_map_params(optimizer, lambda _, s: s, opt_state, param_shardings,
                                        transform_non_params=lambda _: _replicated(mesh))
  replicated = _replicated(mesh)
  state = TrainState(jax.ShapeDtypeStruct((), jnp.int32), params, opt_state)
  shardings = TrainState(replicated, param_shardings, opt_shardings)
  return state, shardings


def with_shardings(abstract, shardings):
  """Shape-only leaves carrying their shardings (what orbax restores into and jit lowers)."""
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract, shardings)


def _replicated(mesh):
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())


def init_train_state(model: Decoder, optimizer: optax.GradientTransformation, mesh,
                     seed: int = 0) -> Tuple[TrainState, TrainState]:
  """A freshly initialised state, created directly in its sharded layout, and its shardings."""
  _, shardings = abstract_train_state(model, optimizer, mesh)

  def create(rng):
    params = nn.meta.unbox(init_params(model, rng))
    return TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params))

  with jax.set_mesh(mesh), nn.logical_axis_rules(partitioning.LOGICAL_AXIS_RULES):
    state = jax.jit(create, out_shardings=shardings)(jax.random.key(seed))
  return state, shardings


def batch_sharding(mesh) -> jax.sharding.NamedSharding:
  """Batches are split over the data and fsdp axes, like t5x's ('batch', 'length')."""
  return partitioning.activation_sharding(mesh, ('batch', 'length'))


def jit_train_step(train_step: Callable, mesh, state_shardings: TrainState) -> Callable:
  """The jitted step: explicit shardings, the state donated (updated in place)."""
  batch = {k: batch_sharding(mesh) for k in BATCH_FEATURES}
  jitted = jax.jit(train_step, in_shardings=(state_shardings, batch),
                   out_shardings=(state_shardings, _replicated(mesh)), donate_argnums=0)

  def run(state, batch_arrays):
    with jax.set_mesh(mesh), nn.logical_axis_rules(partitioning.LOGICAL_AXIS_RULES):
      return jitted(state, batch_arrays)

  run.lower = lambda *a: _lower_in_mesh(jitted, mesh, *a)
  return run


def _lower_in_mesh(jitted, mesh, *args):
  with jax.set_mesh(mesh), nn.logical_axis_rules(partitioning.LOGICAL_AXIS_RULES):
    return jitted.lower(*args)
