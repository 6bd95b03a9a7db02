"""cm3leon_jax: a JAX/Flax reimplementation of CM3Leon (retrieval-augmented, token-based, decoder-only)."""

__version__ = '0.1.0'
