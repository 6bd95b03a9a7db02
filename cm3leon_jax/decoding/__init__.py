"""Decoding: the sampling loop, logit processors (guidance, CD-K, image spans), generation tasks,
loading trained or exported models, and export.

The sampling API is importable from here: ``from cm3leon_jax.decoding import DecodingConfig,
generate``.
"""

from cm3leon_jax.decoding.sampling import (DecodingConfig, DecodingError, DecodingState,
                                           ImageSpans, Samples, decode, generate, image_spans,
                                           make_tokens_to_logits, prefill, right_pad,
                                           text_dropped_prompt, unconditional_prompt)
