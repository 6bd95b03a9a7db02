"""The decoding loop: one jitted ``lax.while_loop`` over the KV cache (CM3Leon, arXiv 2309.02591,
section 3.1).

The contract follows t5x: the loop calls ``tokens_to_logits(state) -> (logits [rows, V], cache)``
once per step, where ``state`` (``DecodingState``) holds each row's current token and index, the
sequences so far and the cache. The caller prefills the cache with the prompts (see
``decoding.prefill``); the loop then re-feeds each prompt's last token, picks the next one,
and so on.

Rows are prompts repeated ``num_decodes`` times; with guidance, the streams (conditional,
unconditional, ...) of all rows are stacked stream-major into one batch, so each step is one model
call, and every stream of a row receives the token picked from the combined logits. Prompts are
right-padded with per-row lengths: row i's next token goes to its own index, so a padded batch
decodes exactly as each prompt alone.
"""

import dataclasses
import math
from typing import Any, Callable, Optional, Tuple

import flax
import jax
import jax.numpy as jnp

from cm3leon_jax.decoding import logits as dl


class DecodingError(ValueError):
  """Decoding settings or prompts that cannot be decoded."""


@flax.struct.dataclass
class DecodingState:
  """What ``tokens_to_logits`` sees at each step.

  Attributes:
    cur_index: [rows] index of `cur_token` in each row's sequence.
    cur_token: [rows, 1] the token to feed now.
    sequences: [rows, length] each row's prompt, the tokens decoded so far, then padding.
    cache: whatever `tokens_to_logits` keeps between steps (the model's KV cache).
  """

  cur_index: jax.Array
  cur_token: jax.Array
  sequences: jax.Array
  cache: Any


@flax.struct.dataclass
class LoopState:
  """The carry of ``decode``'s while loop (t5x's ``SamplingLoopState``).

  Attributes:
    step: scalar int32, how many tokens each row has picked so far.
    decoding: what ``tokens_to_logits`` sees next (current tokens and indices, sequences, cache).
    ended: [rows] bool, rows that have emitted a stop token.
    num_tokens: [rows] int32, tokens each row generated (its stop token included).
    span_state: modality control's per-row image-span state (``dl.prompt_span_state``), or None.
    tokens: [rows, max_new_tokens] int32, the picked tokens, ``pad_id`` after a row ended.
  """

  step: jax.Array
  decoding: DecodingState
  ended: jax.Array
  num_tokens: jax.Array
  span_state: Optional[dl.SpanState]
  tokens: jax.Array


TokensToLogits = Callable[[DecodingState], Tuple[jax.Array, Any]]
# Hook on the guided [rows, V] logits before modality control and token choice (t5x's
# logit_callback_fn): (logits, state) -> logits.
LogitCallback = Callable[[jax.Array, DecodingState], jax.Array]


@dataclasses.dataclass(frozen=True)
class DecodingConfig:
  """How to decode.

  Attributes:
    max_new_tokens: tokens generated per sample at most.
    temperature: softmax temperature; 0 means greedy (argmax).
    top_k: sample among the k most likely tokens; 0 disables.
    top_p: sample from the smallest set of tokens with this much probability; 1 disables.
    num_decodes: samples per prompt.
    guidance_scale: classifier-free guidance scale s (text guidance in the three-stream form);
      None decodes the conditional stream alone.
    image_guidance_scale: with it, three streams (full, image-conditioned, unconditional) as in
      Chameleon's editing; needs guidance_scale.
    cd_k_fraction: share of each prompt's samples drawn with CD-K instead of top-k/top-p (the
      paper mixes half and half); CD-K needs the unconditional stream, so it adds one if needed.
    cd_k_alpha: CD-K's candidate threshold, relative to the k-th largest expert probability.
    cd_k_k: CD-K's K.
    stop_ids: a sample ends after emitting any of these.
    pad_id: emitted by samples that have ended, and pads prompts.
    tokens_per_image: N codes per image; None turns modality control off.
    generate_images: with modality control, whether image spans may be generated (text-to-image);
      False forbids image codes in the output.
    image_open_id: the token starting an image span; None means the vocabulary's
      (`image_open_id`: <break>, or Chameleon's <racm3:break>).
    image_close_id: the token closing it after N codes; None means the vocabulary's
      (`image_close_id`: <break>, or Chameleon's <eoss>).
    uncond_mask_id: the token that replaces each text run in the unconditional stream; None means
      <mask> (see ``decoding.unconditional_prompt``).
    seed: seeds the jax PRNG key of all draws.
  """

  max_new_tokens: int = 32
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  num_decodes: int = 1
  guidance_scale: Optional[float] = None
  image_guidance_scale: Optional[float] = None
  cd_k_fraction: float = 0.0
  cd_k_alpha: float = 0.1
  cd_k_k: int = 5
  stop_ids: Tuple[int, ...] = ()
  pad_id: int = 0
  tokens_per_image: Optional[int] = None
  generate_images: bool = True
  image_open_id: Optional[int] = None
  image_close_id: Optional[int] = None
  uncond_mask_id: Optional[int] = None
  seed: int = 0

  def __post_init__(self):
    object.__setattr__(self, 'stop_ids', tuple(int(i) for i in self.stop_ids))
    for name in ('max_new_tokens', 'num_decodes', 'cd_k_k'):
      _check_int(name, getattr(self, name), 1)
    _check_int('top_k', self.top_k, 0)
    _check_int('seed', self.seed, 0)
    if self.tokens_per_image is not None:
      _check_int('tokens_per_image', self.tokens_per_image, 1)
    _check_range('temperature', self.temperature, 0, math.inf)
    _check_range('top_p', self.top_p, 0, 1, low_open=True)
    _check_range('cd_k_fraction', self.cd_k_fraction, 0, 1)
    _check_range('cd_k_alpha', self.cd_k_alpha, 0, 1, low_open=True)
    for name in ('guidance_scale', 'image_guidance_scale'):
      if getattr(self, name) is not None:
        _check_range(name, getattr(self, name), 0, math.inf)
    if self.image_guidance_scale is not None and self.guidance_scale is None:
      raise DecodingError('DecodingConfig.image_guidance_scale needs guidance_scale (the text '
                          'scale of the three-stream form) too.')

  @property
  def num_streams(self) -> int:
    """Prompt streams per row: 1, 2 (with unconditional) or 3 (full, image-cond, uncond)."""
    if self.image_guidance_scale is not None:
      return 3
    return 2 if self.guidance_scale is not None or self.cd_k_fraction > 0 else 1


def _check_int(name, value, low):
  if isinstance(value, bool) or not isinstance(value, int) or value < low:
    raise DecodingError(f'DecodingConfig.{name} must be an integer >= {low}; got {value!r}.')


def _check_range(name, value, low, high, low_open=False):
  ok = isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)
  ok = ok and (value > low if low_open else value >= low) and value <= high
  if not ok or (high == math.inf and math.isinf(value)):
    bounds = f'{"(" if low_open else "["}{low}, {high}{")" if high == math.inf else "]"}'
    raise DecodingError(f'DecodingConfig.{name} must be a number in {bounds}; got {value!r}.')


def right_pad(prompts: jax.Array, lengths: jax.Array) -> jax.Array:
  """A left-padded batch [rows, length] turned right-padded, the layout ``decode`` and
  ``decoding.prefill`` take (fed left-padded, each row's tokens would attend to its padding)."""
  shift = jax.vmap(lambda row, n: jnp.roll(row, n - row.shape[0]))
  return shift(prompts, lengths)


def decode(tokens_to_logits: TokensToLogits, prompts: jax.Array, lengths: jax.Array, cache: Any,
           keys: jax.Array, config: DecodingConfig, *, use_cd_k: Optional[jax.Array] = None,
           spans: Optional[dl.ImageSpans] = None,
           logit_callback: Optional[LogitCallback] = None) -> Tuple[jax.Array, jax.Array]:
  """Decode `config.max_new_tokens` tokens after each prompt (jit it; config is static).

  Args:
    tokens_to_logits: (DecodingState) -> ([streams * rows, V] logits of the next token, cache).
    prompts: [streams * rows, length] right-padded prompts, stream-major (all conditional rows,
      then all unconditional rows, ...); see ``right_pad`` for left-padded ones.
    lengths: [streams * rows] prompt lengths (>= 1).
    cache: the prefilled cache, whose next write goes to each row's last prompt token.
    keys: [rows] PRNG keys, one per row.
    config: the settings (guidance streams must match `prompts`).
    use_cd_k: [rows] bool, rows that pick with CD-K (expert: the first stream, amateur: the
      last); the others use top-k/top-p. None means no CD-K rows.
    spans: modality control; None turns it off.
    logit_callback: optional hook on the guided logits.

  Returns:
    tokens: [rows, max_new_tokens] the new tokens, `config.pad_id` after a row ended.
    num_tokens: [rows] how many tokens each row generated (its stop token included).
  """
  streams, rows = config.num_streams, keys.shape[0]
  if prompts.shape[0] != streams * rows:
    raise DecodingError(f'decode() got {prompts.shape[0]} prompt rows for {rows} rows of '
                        f'{streams} stream(s); expected {streams * rows}.')
  if use_cd_k is not None and streams == 1:
    raise DecodingError('CD-K rows need the unconditional (<mask>) stream as their amateur; '
                        'set DecodingConfig.cd_k_fraction or guidance_scale.')
  steps = config.max_new_tokens
  sequences = jnp.pad(prompts, ((0, 0), (0, steps)), constant_values=config.pad_id)
  index = lengths - 1
  state = DecodingState(index, jnp.take_along_axis(prompts, index[:, None], axis=1), sequences,
                        cache)
  span_state = dl.prompt_span_state(spans, prompts[:rows], lengths[:rows]) if spans else None
  start = LoopState(step=jnp.int32(0), decoding=state, ended=jnp.zeros(rows, bool),
                    num_tokens=jnp.zeros(rows, jnp.int32), span_state=span_state,
                    tokens=jnp.full((rows, steps), config.pad_id, jnp.int32))

  def running(loop: LoopState):
    return (loop.step < steps) & ~jnp.all(loop.ended)

  def body(loop: LoopState) -> LoopState:
    state = loop.decoding
    logits, cache = tokens_to_logits(state)
    logits = logits.astype(jnp.float32)
    step_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, loop.step)
    token = _pick(logits, state, loop.span_state, step_keys, use_cd_k, config, spans,
                  logit_callback)
    token = jnp.where(loop.ended, config.pad_id, token)
    span_state = dl.span_advance(spans, loop.span_state, token) if spans else loop.span_state
    fed = jnp.tile(token, streams)
    write = jax.vmap(lambda row, t, i: row.at[i].set(t))
    state = DecodingState(state.cur_index + 1, fed[:, None],
                          write(state.sequences, fed, state.cur_index + 1), cache)
    return LoopState(step=loop.step + 1, decoding=state,
                     ended=loop.ended | jnp.isin(token, jnp.array(config.stop_ids, jnp.int32)),
                     num_tokens=loop.num_tokens + ~loop.ended, span_state=span_state,
                     tokens=loop.tokens.at[:, loop.step].set(token))

  end = jax.lax.while_loop(running, body, start)
  return end.tokens, end.num_tokens


def _pick(logits, state, span_state, keys, use_cd_k, config, spans, logit_callback):
  """The next token of each row from the streams' [streams * rows, V] logits."""
  scale = 1.0 if config.guidance_scale is None else config.guidance_scale
  guided = dl.combine_guidance(logits, config.num_streams, scale,
                               config.image_guidance_scale or 0.0)
  if logit_callback is not None:
    guided = logit_callback(guided, state)
  allowed = dl.span_allowed(spans, span_state, guided.shape[-1]) if spans else True
  guided = jnp.where(allowed, guided, -jnp.inf)
  greedy = config.temperature == 0
  temperature = 1.0 if greedy else config.temperature
  scores = dl.top_p_filter(dl.top_k_filter(guided / temperature, config.top_k), config.top_p)
  if use_cd_k is not None:
    streams = logits.reshape(config.num_streams, -1, logits.shape[-1])
    expert = jnp.where(allowed, streams[0], -jnp.inf)
    contrast = dl.cd_k_scores(expert, streams[-1], config.cd_k_alpha, config.cd_k_k)
    if greedy:  # Ties in the contrast (e.g. amateur = expert) go to the likelier expert token.
      contrast = dl.break_ties(contrast, expert)
    scores = jnp.where(use_cd_k[:, None], contrast / temperature, scores)
  return dl.choose(keys, scores, greedy)
