"""The weighted next-token loss and z-loss against a direct numpy computation."""

import jax
import numpy as np

from cm3leon_jax.training.losses import lm_loss


def numpy_loss(logits, targets, weights, z_coefficient):
  logits = logits.astype(np.float64)
  log_z = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
  picked = np.take_along_axis(logits, targets[..., None], -1)[..., 0]
  per_token = (log_z - picked) + z_coefficient * log_z**2
  return (weights * per_token).sum() / weights.sum()


def test_weighted_loss_with_z_loss_matches_numpy():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(3, 7, 11)).astype(np.float32) * 3
  targets = rng.integers(0, 11, size=(3, 7))
  weights = rng.integers(0, 2, size=(3, 7)).astype(np.float32)
  loss, metrics = lm_loss(logits, targets, weights, z_loss=1e-2)
  np.testing.assert_allclose(loss, numpy_loss(logits, targets, weights, 1e-2), rtol=1e-5)
  np.testing.assert_allclose(metrics['weight_sum'], weights.sum())
  assert metrics['z_loss'] > 0


def test_zero_weight_tokens_do_not_affect_loss_or_gradient():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(1, 4, 5)).astype(np.float32)
  targets = np.array([[1, 2, 3, 4]])
  weights = np.array([[1.0, 0.0, 1.0, 0.0]], np.float32)
  grads = jax.grad(lambda x: lm_loss(x, targets, weights)[0])(logits)
  assert not np.any(grads[0, 1]) and not np.any(grads[0, 3])
  changed = logits.copy()
  changed[0, 1] += 10
  np.testing.assert_allclose(lm_loss(changed, targets, weights)[0],
                             lm_loss(logits, targets, weights)[0], rtol=1e-6)


def test_all_zero_weights_give_zero_not_nan():
  loss, _ = lm_loss(np.zeros((1, 2, 3), np.float32), np.zeros((1, 2), int), np.zeros((1, 2)))
  assert float(loss) == 0.0
