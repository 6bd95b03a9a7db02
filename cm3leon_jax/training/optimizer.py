"""AdamW with warmup, a decay schedule and global-norm clipping, configured per model size.

CM3Leon (arXiv 2309.02591) section 2.4: warmup 1500 steps; peak LR 6e-4 / 5e-4 / 1.2e-4 for 350M /
760M / 7B; the optimizer itself is not stated, so AdamW(0.9, 0.95), eps 1e-8, weight decay 0.1,
clip 1.0 (OPT's and Chameleon's choice; see docs/method.md). The gin files of gin/runs/ set these
per size; the schedule's shape after warmup is configurable ('cosine', 'linear' or 'constant').
"""

import dataclasses

import jax
import optax

SCHEDULES = ('cosine', 'linear', 'constant')


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """AdamW and learning-rate schedule settings.

  Attributes:
    peak_learning_rate: the rate reached at the end of warmup.
    warmup_steps: linear warmup from 0.
    schedule: decay after warmup: 'cosine' or 'linear' down to end_learning_rate_fraction * peak
      at the last step, or 'constant'.
    end_learning_rate_fraction: the final rate as a fraction of the peak.
    b1, b2, eps: Adam's moments and epsilon.
    weight_decay: decoupled weight decay, on matrices only (norm scales are not decayed).
    clip_norm: clip gradients to this global norm (0 disables clipping).
  """

  peak_learning_rate: float = 6e-4
  warmup_steps: int = 1500
  schedule: str = 'cosine'
  end_learning_rate_fraction: float = 0.1
  b1: float = 0.9
  b2: float = 0.95
  eps: float = 1e-8
  weight_decay: float = 0.1
  clip_norm: float = 1.0

  def __post_init__(self):
    if self.schedule not in SCHEDULES:
      raise ValueError(f'OptimizerConfig.schedule must be one of {SCHEDULES}, got '
                       f'{self.schedule!r}.')
    if self.peak_learning_rate <= 0 or self.warmup_steps < 0 or self.clip_norm < 0:
      raise ValueError('OptimizerConfig needs peak_learning_rate > 0, warmup_steps >= 0 and '
                       f'clip_norm >= 0; got {self}.')


def learning_rate_schedule(config: OptimizerConfig, total_steps: int) -> optax.Schedule:
  """Linear warmup to the peak, then the configured decay until `total_steps`."""
  peak, warmup = config.peak_learning_rate, config.warmup_steps
  decay_steps = max(total_steps - warmup, 1)
  end = peak * config.end_learning_rate_fraction
  if config.schedule == 'cosine':
    decay = optax.cosine_decay_schedule(peak, decay_steps, alpha=config.end_learning_rate_fraction)
  elif config.schedule == 'linear':
    decay = optax.linear_schedule(peak, end, decay_steps)
  else:
    decay = optax.constant_schedule(peak)
  warmup_schedule = optax.linear_schedule(0.0, peak, warmup) if warmup else None
  if warmup_schedule is None:
    return decay
  return optax.join_schedules([warmup_schedule, decay], [warmup])


def _decay_mask(params):
  """Decay weight matrices and embeddings; leave vectors (norm scales) alone."""
  return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(config: OptimizerConfig, total_steps: int) -> optax.GradientTransformation:
  """Clip by global norm, then AdamW on the schedule."""
  adamw = optax.adamw(learning_rate_schedule(config, total_steps), b1=config.b1, b2=config.b2,
                      eps=config.eps, weight_decay=config.weight_decay, mask=_decay_mask)
  if not config.clip_norm:
    return adamw
  return optax.chain(optax.clip_by_global_norm(config.clip_norm), adamw)
