"""Generation with a ``Decoder``: token prompts in, samples out (CM3Leon, arXiv 2309.02591,
section 3.1; see docs/decoding.md).

``generate(model, params, prompts, DecodingConfig(...), vocab)`` validates the prompts, builds the
guidance streams (``unconditional_prompt``), prefills the KV cache and runs the loop of
``decoding.loop.decode``, all under one ``jax.jit``. ``make_tokens_to_logits`` and ``prefill``
are the pieces for callers who drive ``decode`` themselves.

Prompts are right-padded into one batch. After prefilling the padded batch, each row's cache index
is set back to its own last prompt token, which the first step feeds again: the padding slots are
overwritten before any query can see them, so a padded batch decodes as each prompt alone. Left
padding would need an attention mask over the padding, which the cache does not keep: turn such
batches around with ``right_pad`` first.
"""

import dataclasses
import functools
from typing import List, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from cm3leon_jax.decoding.logits import ImageSpans
from cm3leon_jax.decoding.loop import (DecodingConfig, DecodingError, DecodingState, LogitCallback,
                                       TokensToLogits, decode, right_pad)
from cm3leon_jax.models.decoder import Decoder, init_cache

__all__ = ['DecodingConfig', 'DecodingError', 'DecodingState', 'ImageSpans', 'Samples', 'decode',
           'generate', 'image_spans', 'make_tokens_to_logits', 'prefill', 'right_pad',
           'unconditional_prompt', 'text_dropped_prompt']


def make_tokens_to_logits(model: Decoder, params) -> TokensToLogits:
  """The loop's ``tokens_to_logits``: one cached decoder step on each row's current token."""

  def tokens_to_logits(state: DecodingState):
    logits, variables = model.apply({'params': params, 'cache': state.cache}, state.cur_token,
                                    decode=True, mutable=['cache'])
    return logits[:, -1], variables['cache']

  return tokens_to_logits


def prefill(model: Decoder, params, prompts: jax.Array, lengths: jax.Array, cache_length: int):
  """A cache holding the right-padded `prompts` [rows, length], rewound so that each row's next
  write (and position) is its last prompt token, `lengths - 1`, which ``decode`` feeds first."""
  cache = init_cache(model, prompts.shape[0], cache_length)
  _, variables = model.apply({'params': params, 'cache': cache}, prompts, decode=True,
                             mutable=['cache'])
  index = (lengths - 1).astype(jnp.int32)

  def rewind(path, leaf):
    if path[-1].key in ('cache_index', 'position'):  # Per-example counters, [..., rows].
      return jnp.broadcast_to(index, leaf.shape).astype(leaf.dtype)
    return leaf

  return jax.tree_util.tree_map_with_path(rewind, variables['cache'])


def unconditional_prompt(prompt: Sequence[int], vocab, mask_images: bool = False,
                         mask_id: Optional[int] = None) -> List[int]:
  """The guidance stream of `prompt`: each maximal run of text tokens becomes a single mask token.

  One mask per run, not one per token, because that is what the CM3 objective shows the model
  for a masked span. Specials (<break>, sentinels, ...) stay. `mask_images` also replaces each run
  of image codes (the three-stream form's unconditional stream). `mask_id` is the token standing
  for a masked span (default <mask>; a model trained with enumerated sentinels saw <sentinel:0>).
  """
  mask_id = vocab.mask_id if mask_id is None else mask_id
  out: List[int] = []
  previous = None
  for token in prompt:
    kind = 'text' if vocab.is_text(token) else 'image' if vocab.is_image(token) else 'special'
    masked = kind == 'text' or (mask_images and kind == 'image')
    if not masked:
      out.append(token)
    elif kind != previous:
      out.append(mask_id)
    previous = kind if masked else None
  return out


def text_dropped_prompt(prompt: Sequence[int], vocab, keep_images: bool) -> List[int]:
  """A guidance stream in Chameleon's form (its inference code's in-batch guidance): the text is
  dropped, not masked. With `keep_images` (the image-conditioned stream) the sequence start, the
  images and their begin and end tokens stay; without (the unconditional stream) only the
  sequence start and a final begin-image token do."""
  if keep_images:
    markers = set(vocab.sequence_start_ids) | {vocab.image_open_id, vocab.image_close_id}
    return [t for t in prompt if t in markers or vocab.is_image(t)]
  start = [t for t in prompt[:1] if t in vocab.sequence_start_ids]
  end = [prompt[-1]] if prompt[-1] == vocab.image_open_id and len(prompt) > len(start) else []
  return (start + end) or list(prompt[:1])


def image_spans(config: DecodingConfig, vocab) -> Optional[ImageSpans]:
  """The modality control `config` asks for (None when tokens_per_image is None)."""
  if config.tokens_per_image is None:
    return None
  if vocab is None:
    raise DecodingError('DecodingConfig.tokens_per_image needs the vocabulary (its image ids and '
                        '<break>); pass vocab=.')
  open_id = vocab.image_open_id if config.image_open_id is None else config.image_open_id
  close_id = vocab.image_close_id if config.image_close_id is None else config.image_close_id
  spans = ImageSpans(config.tokens_per_image, vocab.first_image_id, vocab.num_image_codes,
                     open_id, close_id, config.generate_images)
  for name in ('open_id', 'close_id'):
    value = getattr(spans, name)
    if not 0 <= value < vocab.vocab_size or spans.is_image(value):
      raise DecodingError(f'DecodingConfig.image_{name}={value} must be a non-image token id of '
                          f'the vocabulary [0, {vocab.vocab_size}).')
  return spans


@dataclasses.dataclass
class Samples:
  """Generated tokens.

  Attributes:
    tokens: [prompts, num_decodes, max_new_tokens] int32, pad_id after a sample ended.
    num_tokens: [prompts, num_decodes] tokens each sample generated (its stop token included).
  """

  tokens: np.ndarray
  num_tokens: np.ndarray


def generate(model: Decoder, params, prompts: Sequence[Sequence[int]], config: DecodingConfig,
             vocab=None, logit_callback: Optional[LogitCallback] = None) -> Samples:
  """Sample `config.num_decodes` continuations of every prompt.

  Args:
    model: the Decoder.
    params: its (unboxed) parameters.
    prompts: unpadded token id lists, of any lengths (a 2-D array is taken as equal-length
      prompts, padding included).
    config: the decoding settings.
    vocab: the MultimodalVocabulary; needed for guidance, CD-K and modality control.
    logit_callback: optional hook on the guided logits (see ``decoding.loop.LogitCallback``).

  Returns:
    The samples. Raises DecodingError, naming the problem, for prompts or settings it cannot use.
  """
  prompts = _checked_prompts(prompts, config, model.config)
  if vocab is not None and vocab.vocab_size > model.config.vocab_size:
    raise DecodingError(f'The vocabulary has {vocab.vocab_size} ids but the model only '
                        f'{model.config.vocab_size}; they do not belong together.')
  streams = _streams(prompts, config, vocab)
  spans = image_spans(config, vocab)
  d = config.num_decodes
  rows = [p for stream in streams for p in stream for _ in range(d)]
  lengths = np.array([len(p) for p in rows], np.int32)
  # Padding to a multiple of 16 lets batches of similar lengths share one compilation; the checks
  # above guarantee room for max_new_tokens after the longest prompt.
  room = model.config.max_length - config.max_new_tokens
  width = min(-(-lengths.max() // 16) * 16, room)
  padded = np.full((len(rows), width), config.pad_id, np.int32)
  for i, p in enumerate(rows):
    padded[i, :len(p)] = p
  keys = jax.random.split(jax.random.key(config.seed), len(prompts) * d)
  num_cd_k = round(d * config.cd_k_fraction)
  use_cd_k = np.tile(np.arange(d) >= d - num_cd_k, len(prompts)) if num_cd_k else None
  # The seed does not change the program: keep it out of the static key to avoid recompiling.
  static = dataclasses.replace(config, seed=0)
  tokens, num_tokens = _generate_rows(model, static, spans, logit_callback, params, padded,
                                      lengths, keys, use_cd_k)
  shape = (len(prompts), d)
  return Samples(np.asarray(tokens).reshape(shape + (-1,)), np.asarray(num_tokens).reshape(shape))


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _generate_rows(model, config, spans, logit_callback, params, prompts, lengths, keys, use_cd_k):
  cache = prefill(model, params, prompts, lengths, prompts.shape[1] + config.max_new_tokens)
  return decode(make_tokens_to_logits(model, params), prompts, lengths, cache, keys, config,
                use_cd_k=use_cd_k, spans=spans, logit_callback=logit_callback)


def _checked_prompts(prompts, config: DecodingConfig, model_config) -> List[List[int]]:
  """Prompts as int lists, or a DecodingError naming the first problem."""
  if isinstance(prompts, np.ndarray):
    prompts = list(prompts)
  if isinstance(prompts, (str, bytes)) or not isinstance(prompts, Sequence) or not prompts:
    raise DecodingError('generate() needs a non-empty list of prompts (lists of token ids).')
  vocab_size, max_length = model_config.vocab_size, model_config.max_length
  checked = []
  for i, prompt in enumerate(prompts):
    ids = np.asarray(prompt)
    if ids.ndim != 1 or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
      raise DecodingError(f'Prompt {i} must be a flat list of integer token ids; got {prompt!r}.')
    if not ids.size:
      raise DecodingError(f'Prompt {i} is empty; a prompt needs at least one token.')
    bad = np.flatnonzero((ids < 0) | (ids >= vocab_size))
    if bad.size:
      raise DecodingError(f'Prompt {i} has token id {ids[bad[0]]} at position {bad[0]}, outside '
                          f"the model's vocabulary [0, {vocab_size}).")
    if ids.size + config.max_new_tokens > max_length:
      raise DecodingError(
          f'Prompt {i} has {ids.size} tokens; with max_new_tokens={config.max_new_tokens} it '
          f"needs {ids.size + config.max_new_tokens} positions, more than the model's "
          f'max_length={max_length}. Shorten the prompt or lower max_new_tokens.')
    checked.append([int(t) for t in ids])
  mask = () if config.uncond_mask_id is None else (config.uncond_mask_id,)
  for name, ids in (('stop_ids', config.stop_ids), ('pad_id', (config.pad_id,)),
                    ('uncond_mask_id', mask)):
    if any(not 0 <= t < vocab_size for t in ids):
      raise DecodingError(f'DecodingConfig.{name}={ids} lies outside the vocabulary '
                          f'[0, {vocab_size}).')
  return checked


def _streams(prompts: List[List[int]], config: DecodingConfig, vocab) -> List[List[List[int]]]:
  """The prompts of each guidance stream: conditional first, unconditional last."""
  if config.num_streams == 1:
    return [prompts]
  if vocab is None:
    raise DecodingError('Guidance and CD-K build <mask> prompts from the vocabulary; pass vocab=.')
  if vocab.guidance_style == 'drop':
    uncond = [text_dropped_prompt(p, vocab, keep_images=False) for p in prompts]
    image_conditioned = [text_dropped_prompt(p, vocab, keep_images=True) for p in prompts]
  else:
    mask = config.uncond_mask_id
    uncond = [unconditional_prompt(p, vocab, config.num_streams == 3, mask) for p in prompts]
    image_conditioned = [unconditional_prompt(p, vocab, mask_id=mask) for p in prompts]
  if config.num_streams == 2:
    return [prompts, uncond]
  return [prompts, image_conditioned, uncond]
