"""Rematerialisation policies, by name, for the transformer blocks.

A policy says which activations a block keeps for the backward pass; everything else is recomputed.
The names are MaxText's (``remat_policy`` in its base.yml, resolved in its decoders.py), with
the same meaning, over the activations the blocks name with ``jax.ad_checkpoint.checkpoint_name``
(MaxText's names too):

  query_proj, key_proj, value_proj   the attention's q / k / v projections (after QK-norm, RoPE)
  out_proj                           the attention's output projection
  mlpwo                              the MLP's output projection

Policies:

  none                   no rematerialisation: every activation is kept.
  full                   keep nothing: the whole block is recomputed.
  minimal                keep every matmul output without batch dimensions (the projections, not
                         the attention's score and value products).
  save_qkv_proj          keep q, k and v.
  save_out_proj          keep the attention's output projection only.
  save_dot_except_mlp    keep q, k, v and the attention's output projection.
  save_dot_except_mlpwi  keep q, k, v, the attention's output projection and the MLP's output
                         projection (everything but the MLP's input projections).
  save_dots              (ours, not MaxText's) keep every matmul output, the attention's batched
                         score and value products included.
"""

from typing import Callable, Optional

import jax

QKV_NAMES = ('query_proj', 'key_proj', 'value_proj')
ATTENTION_OUT_NAME = 'out_proj'
MLP_OUT_NAME = 'mlpwo'

_save = jax.checkpoint_policies.save_only_these_names

POLICIES = {
    'none': None,
    'full': jax.checkpoint_policies.nothing_saveable,
    'minimal': jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    'save_qkv_proj': _save(*QKV_NAMES),
    'save_out_proj': _save(ATTENTION_OUT_NAME),
    'save_dot_except_mlp': _save(*QKV_NAMES, ATTENTION_OUT_NAME),
    'save_dot_except_mlpwi': _save(*QKV_NAMES, ATTENTION_OUT_NAME, MLP_OUT_NAME),
    'save_dots': jax.checkpoint_policies.dots_saveable,
}

# Names this project used before it took MaxText's, and what they are called now. (Its old
# 'save_out_proj' kept the MLP's output projection too; the name now keeps MaxText's meaning.)
RENAMED = {'save_qkv_and_out_proj': 'save_dot_except_mlpwi'}


def is_known(name) -> bool:
  return isinstance(name, str) and name in POLICIES


def unknown_policy_message(name) -> str:
  """The one error text for a policy name that is not in POLICIES."""
  renamed = isinstance(name, str) and name in RENAMED
  hint = f" ('{name}' is now called '{RENAMED[name]}')" if renamed else ''
  return (f'remat_policy={name!r} is unknown{hint}; choose one of {list(POLICIES)} (see '
          'cm3leon_jax/models/remat.py for what each keeps).')


def policy(name: str) -> Optional[Callable]:
  """The jax.checkpoint policy of `name` (None for 'none', which does not rematerialise)."""
  if not is_known(name):
    raise ValueError(unknown_policy_message(name))
  return POLICIES[name]


def uses_remat(name: str) -> bool:
  """Whether the named policy wraps blocks in jax.checkpoint at all."""
  return policy(name) is not None
