"""Next-token cross-entropy with per-token weights and an optional z-loss."""

from typing import Dict, Optional, Tuple

import jax
import jax.numpy as jnp


def token_losses(logits: jax.Array, targets: jax.Array,
                 z_loss: float = 0.0) -> Tuple[jax.Array, jax.Array]:
  """Per-token cross-entropy and z-loss, in float32.

  Args:
    logits: [..., vocab] unnormalised scores.
    targets: [...] integer targets.
    z_loss: coefficient of log(Z)^2 (PaLM/Chameleon's z-loss; 0 disables it).

  Returns:
    (cross_entropy, z_loss_term), each shaped like `targets`. The total per-token loss is their sum.
  """
  logits = logits.astype(jnp.float32)
  log_z = jax.nn.logsumexp(logits, axis=-1)
  target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  return log_z - target_logit, z_loss * jnp.square(log_z)


def lm_loss(logits: jax.Array, targets: jax.Array, weights: Optional[jax.Array] = None,
            z_loss: float = 0.0) -> Tuple[jax.Array, Dict[str, jax.Array]]:
  """Weighted mean next-token loss over the tokens whose weight is non-zero.

  Args:
    logits: [batch, length, vocab].
    targets: [batch, length] (seqio's decoder_target_tokens).
    weights: [batch, length] per-token loss weights (decoder_loss_weights); None weighs all 1.
    z_loss: z-loss coefficient.

  Returns:
    (loss, metrics): loss = sum(w * (ce + z)) / sum(w); metrics holds the weighted cross-entropy
    and z-loss means and the weight sum.
  """
  if weights is None:
    weights = jnp.ones(targets.shape, jnp.float32)
  weights = weights.astype(jnp.float32)
  cross_entropy, z_term = token_losses(logits, targets, z_loss)
  weight_sum = jnp.maximum(weights.sum(), 1e-8)  # An all-zero batch gives loss 0, not NaN.
  ce_mean = (weights * cross_entropy).sum() / weight_sum
  z_mean = (weights * z_term).sum() / weight_sum
  return ce_mean + z_mean, {'cross_entropy': ce_mean, 'z_loss': z_mean, 'weight_sum': weights.sum()}
