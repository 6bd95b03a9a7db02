"""Logit processors of the decoding loop (``decoding/loop.py``): guidance, image spans, token choice.

Every function works on one decoding step of a whole batch, [rows, vocab] float32 logits, so the
loop stays one jitted ``lax.while_loop``. Disallowed tokens get -inf.
"""

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp


def combine_guidance(logits: jax.Array, num_streams: int, scale: float,
                     image_scale: float = 1.0) -> jax.Array:
  """Classifier-free guidance: [streams * rows, V] stream-major logits -> [rows, V].

  Streams: 1 (no guidance), 2 (conditional, unconditional) or 3 (full, image-conditioned,
  unconditional: Chameleon's editing form ``u + s_img * (i - u) + s_txt * (f - i)``).
  """
  streams = logits.reshape(num_streams, -1, logits.shape[-1])
  if num_streams == 1:
    return streams[0]
  if num_streams == 2:
    cond, uncond = streams
    # The paper's uncond + s * (cond - uncond), rearranged so that s = 1 gives cond bit for bit
    # (CFG with s = 1 must sample exactly what conditional sampling does).
    return cond + (scale - 1.0) * (cond - uncond)
  full, image_cond, uncond = streams
  return uncond + image_scale * (image_cond - uncond) + scale * (full - image_cond)


@dataclasses.dataclass(frozen=True)
class ImageSpans:
  """Modality control: which tokens may follow, given whether a row is inside an image.

  Attributes:
    tokens_per_image: N, the image tokenizer's codes per image; a span holds exactly N codes.
    first_image_id: id of image code 0.
    num_image_codes: image ids are [first_image_id, first_image_id + num_image_codes).
    open_id: the token that, emitted (or ending a prompt) outside an image, starts an image span.
    close_id: the token forced after the N-th code.
    generate_images: False forbids image codes everywhere (text-only output, e.g. captions); True
      lets `open_id` start image spans (text-to-image).
  """

  tokens_per_image: int
  first_image_id: int
  num_image_codes: int
  open_id: int
  close_id: int
  generate_images: bool = True

  def is_image(self, ids):
    """Boolean mask of image-code ids."""
    return (ids >= self.first_image_id) & (ids < self.first_image_id + self.num_image_codes)


class SpanState(NamedTuple):
  """Per-row modality state carried through the loop."""

  in_image: jax.Array  # [rows] bool
  left: jax.Array  # [rows] int32: image codes the open span still needs


def span_advance(spans: ImageSpans, state: SpanState, token: jax.Array) -> SpanState:
  """The state after `token` [rows]. Used on prompts too, so it accepts any token sequence."""
  image = spans.is_image(token)
  opens = ~state.in_image & (token == spans.open_id)
  # An image at the very start of a document has no <break> before it: its first code opens it.
  bare_start = ~state.in_image & image
  continues = state.in_image & image
  # Inside a span any non-image token ends it: the forced close token, or, in a prompt, whatever
  # follows a partial image (e.g. <infill> in a captioning prompt).
  in_image = (opens | bare_start | continues) & spans.generate_images
  n = spans.tokens_per_image
  left = jnp.where(opens, n, jnp.where(continues, jnp.maximum(state.left - 1, 0),
                                      jnp.where(bare_start, n - 1, 0)))
  return SpanState(in_image, jnp.where(in_image, left, 0).astype(jnp.int32))


def prompt_span_state(spans: ImageSpans, prompts: jax.Array, lengths: jax.Array) -> SpanState:
  """The state at the end of each right-padded prompt [rows, length] (padding is skipped)."""
  rows = prompts.shape[0]
  start = SpanState(jnp.zeros(rows, bool), jnp.zeros(rows, jnp.int32))

  def step(state, column):
    index, token = column
    advanced = span_advance(spans, state, token)
    valid = index < lengths
    return jax.tree.map(lambda new, old: jnp.where(valid, new, old), advanced, state), None

  columns = (jnp.arange(prompts.shape[1]), prompts.T)
  return jax.lax.scan(step, start, columns)[0]


def span_allowed(spans: ImageSpans, state: SpanState, vocab_size: int) -> jax.Array:
  """[rows, V] bool: image codes only inside a span, its close token once it is full, and
  anything but image codes outside one."""
  ids = jnp.arange(vocab_size)
  image = spans.is_image(ids)[None, :]
  full = (state.in_image & (state.left == 0))[:, None]
  inside = jnp.where(full, (ids == spans.close_id)[None, :], image)
  return jnp.where(state.in_image[:, None], inside, ~image)


def top_k_filter(logits: jax.Array, k: int) -> jax.Array:
  """Keep the k largest logits of each row (ties at the k-th included); k <= 0 keeps all."""
  if k <= 0 or k >= logits.shape[-1]:
    return logits
  kth = jax.lax.top_k(logits, k)[0][:, -1:]
  return jnp.where(logits < kth, -jnp.inf, logits)


def top_p_filter(logits: jax.Array, p: float) -> jax.Array:
  """Keep the smallest set of most likely tokens whose probability reaches p (nucleus)."""
  if p >= 1.0:
    return logits
  ordered = -jnp.sort(-logits, axis=-1)
  probs = jax.nn.softmax(ordered, axis=-1)
  # A token is kept while the mass before it is still short of p; the top token always is.
  keep = (jnp.cumsum(probs, axis=-1) - probs) < p
  last_kept = jnp.sum(keep, axis=-1, keepdims=True) - 1
  threshold = jnp.take_along_axis(ordered, last_kept, axis=-1)
  return jnp.where(logits < threshold, -jnp.inf, logits)


def cd_k_scores(expert: jax.Array, amateur: jax.Array, alpha: float, k: int) -> jax.Array:
  """CD-K: log p_expert - log p_amateur on V = {t : p_expert(t) >= alpha * k-th largest
  p_expert}, -inf elsewhere. `expert` carries the -inf of disallowed tokens."""
  log_expert = jax.nn.log_softmax(expert, axis=-1)
  log_amateur = jax.nn.log_softmax(amateur, axis=-1)
  kth = jax.lax.top_k(log_expert, min(k, expert.shape[-1]))[0][:, -1:]
  candidates = log_expert >= jnp.log(alpha) + kth
  return jnp.where(candidates, log_expert - log_amateur, -jnp.inf)


def break_ties(scores: jax.Array, tie_breaker: jax.Array) -> jax.Array:
  """Scores [rows, V] with one finite entry per row: among the entries tied for the row's best
  score, the one with the largest `tie_breaker`."""
  best = scores >= jnp.max(scores, axis=-1, keepdims=True)
  winner = jnp.argmax(jnp.where(best, tie_breaker, -jnp.inf), axis=-1)
  return jnp.where(jnp.arange(scores.shape[-1]) == winner[:, None], 0.0, -jnp.inf)


def choose(keys: jax.Array, scores: jax.Array, greedy: bool) -> jax.Array:
  """One token per row: the argmax, or a draw from softmax(scores) with each row's own key (so a
  row's draw does not depend on the rest of the batch)."""
  if greedy:
    return jnp.argmax(scores, axis=-1).astype(jnp.int32)
  draw = jax.vmap(jax.random.categorical)
  return draw(keys, scores).astype(jnp.int32)
