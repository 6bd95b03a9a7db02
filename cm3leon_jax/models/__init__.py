"""Flax modules of cm3leon_jax."""
