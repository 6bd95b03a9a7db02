"""Rematerialisation policies, by name, for the transformer blocks.

The names follow MaxText: a config says which activations a block keeps for the backward pass and
which it recomputes. 'none' means no rematerialisation at all (everything kept).
"""

import jax

# Activations named with jax.ad_checkpoint.checkpoint_name inside the blocks.
QKV_NAMES = ('query_proj', 'key_proj', 'value_proj')
OUT_NAMES = ('attention_out', 'mlp_out')

POLICIES = {
    'none': None,
    'full': jax.checkpoint_policies.nothing_saveable,
    'minimal': jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    'save_dots': jax.checkpoint_policies.dots_saveable,
    'save_qkv_proj': jax.checkpoint_policies.save_only_these_names(*QKV_NAMES),
    'save_out_proj': jax.checkpoint_policies.save_only_these_names(*OUT_NAMES),
    'save_qkv_and_out_proj': jax.checkpoint_policies.save_only_these_names(*QKV_NAMES, *OUT_NAMES),
}


def uses_remat(name: str) -> bool:
  """Whether the named policy wraps blocks in jax.checkpoint at all."""
  return POLICIES[name] is not None
