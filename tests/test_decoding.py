"""Decoding: the loop on toy tokens_to_logits functions, then on a tiny Decoder, then bad input."""

import dataclasses
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cm3leon_jax import decoding
from cm3leon_jax.decoding import DecodingConfig, DecodingError, ImageSpans, decode
from cm3leon_jax.decoding.logits import combine_guidance
from cm3leon_jax.models.decoder import Decoder, init_params
from helpers import tiny_config


class ToyVocabulary:
  """MultimodalVocabulary's id layout for a 20-id text vocabulary, 2 sentinels and 16 image codes:
  text 0..19, <break> 20, <infill> 21, <eoss> 22, <mask> 23, sentinels 24-25, images 26..41.

  Duck-typed rather than the real class: that imports TensorFlow, after which importing
  transformers (tests/test_decoding_chameleon.py, which does use the real class) segfaults.
  """

  num_text, eos_id = 20, 1
  break_id, infill_id, eoss_id, mask_id = 20, 21, 22, 23
  first_image_id, num_image_codes, vocab_size = 26, 16, 42

  def sentinel_id(self, index):
    return 24 + index

  image_open_id = image_close_id = break_id
  guidance_style, sequence_start_ids = 'mask', ()

  def is_image(self, ids):
    return (ids >= self.first_image_id) & (ids < self.first_image_id + self.num_image_codes)

  def is_text(self, ids):
    return (np.asarray(ids) >= 0) & (np.asarray(ids) < self.num_text)


VOCAB = ToyVocabulary()
V = VOCAB.vocab_size
BREAK, MASK, EOS = VOCAB.break_id, VOCAB.mask_id, VOCAB.eos_id
IMAGES = np.arange(VOCAB.first_image_id, V)
N = 4  # Tokens per image of the toy spans.


def markov_table(seed=0, scale=3.0):
  """[V, V] logits of the next token given the current one."""
  return np.random.default_rng(seed).normal(0, scale, (V, V)).astype(np.float32)


def markov(table):
  """A toy tokens_to_logits whose logits depend on the current token only: table[token]."""
  return lambda state: (jnp.asarray(table)[state.cur_token[:, 0]], state.cache)


def history(seed=0):
  """A toy tokens_to_logits whose logits depend on each row's whole sequence up to cur_index
  (and on nothing past it, padding included)."""
  table = jnp.asarray(np.random.default_rng(seed).normal(0, 3.0, (97, V)), jnp.float32)

  def tokens_to_logits(state):
    width = state.sequences.shape[1]
    seen = jnp.arange(width)[None, :] <= state.cur_index[:, None]
    weights = (jnp.arange(width) * 7 + 3) % 97
    code = jnp.sum(jnp.where(seen, state.sequences * weights, 0), axis=1) % 97
    return table[code], state.cache

  return tokens_to_logits


def run(tokens_to_logits, prompts, config, keys=None, use_cd_k=None, spans=None):
  """decode() on stream-major prompt lists, jitted; returns (tokens, num_tokens) as numpy."""
  lengths = np.array([len(p) for p in prompts], np.int32)
  padded = np.zeros((len(prompts), lengths.max()), np.int32)
  for i, p in enumerate(prompts):
    padded[i, :len(p)] = p
  rows = len(prompts) // config.num_streams
  if keys is None:
    keys = jax.random.split(jax.random.key(config.seed), rows)
  fn = jax.jit(functools.partial(decode, tokens_to_logits, config=config, spans=spans))
  tokens, num_tokens = fn(padded, lengths, None, keys, use_cd_k=use_cd_k)
  return np.asarray(tokens), np.asarray(num_tokens)


def softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


# --- toy tokens_to_logits ---------------------------------------------------------------------


def test_greedy_is_deterministic_and_follows_the_argmax():
  table = markov_table()
  toy = markov(table)
  config = DecodingConfig(max_new_tokens=10, temperature=0)
  first, _ = run(toy, [[3, 4]], config)
  again, _ = run(toy, [[3, 4]], dataclasses.replace(config, seed=7))
  np.testing.assert_array_equal(first, again)
  expected, token = [], 4
  for _ in range(10):
    token = int(table[token].argmax())
    expected.append(token)
  assert first[0].tolist() == expected


@pytest.mark.parametrize('top_k, top_p', [(5, 1.0), (0, 0.6), (8, 0.5)])
def test_top_k_and_top_p_never_sample_outside_the_allowed_set(top_k, top_p):
  rows, temperature = 400, 0.8
  table = markov_table(1, scale=1.5)
  config = DecodingConfig(max_new_tokens=4, temperature=temperature, top_k=top_k, top_p=top_p,
                          num_decodes=rows)
  tokens, _ = run(markov(table), [[5]] * rows, config)
  table = table / temperature
  previous = np.full(rows, 5)
  for step in range(4):
    for prev in np.unique(previous):
      logits = table[prev]
      allowed = set(np.argsort(-logits)[:top_k or V])
      probs = softmax(np.where(np.isin(np.arange(V), list(allowed)), logits, -np.inf))
      order = np.argsort(-probs)
      mass_before = np.cumsum(probs[order]) - probs[order]
      allowed &= set(order[mass_before < top_p])
      drawn = set(tokens[previous == prev, step])
      assert drawn <= allowed, (step, prev, drawn - allowed)
    previous = tokens[:, step]
  assert len(set(tokens.ravel())) > 3  # Sampling, not greedy.


def test_cfg_with_scale_one_equals_conditional_sampling():
  toy = history(2)
  cond = [[3, 4, 5, BREAK], [6, 7, BREAK]]
  uncond = [decoding.unconditional_prompt(p, VOCAB) for p in cond]
  assert uncond == [[MASK, BREAK], [MASK, BREAK]]
  base = DecodingConfig(max_new_tokens=12, temperature=1.0, top_p=0.9)
  plain, _ = run(toy, cond, base)
  guided, _ = run(toy, cond + uncond, dataclasses.replace(base, guidance_scale=1.0))
  np.testing.assert_array_equal(guided, plain)
  stronger, _ = run(toy, cond + uncond, dataclasses.replace(base, guidance_scale=4.0))
  assert (stronger != plain).any()


def test_three_streams_with_unit_scales_follow_the_full_prompt():
  toy = history(10)
  full = [[3, 4, BREAK, 30, 31, 32, 33, BREAK, 5, BREAK]]
  image_cond = [decoding.unconditional_prompt(full[0], VOCAB)]
  uncond = [decoding.unconditional_prompt(full[0], VOCAB, mask_images=True)]
  base = DecodingConfig(max_new_tokens=10, temperature=0)
  plain, _ = run(toy, full, base)
  three = DecodingConfig(max_new_tokens=10, temperature=0, guidance_scale=1.0,
                         image_guidance_scale=1.0)
  guided, _ = run(toy, full + image_cond + uncond, three)
  np.testing.assert_array_equal(guided, plain)  # u + (i - u) + (f - i) = f.
  edited, _ = run(toy, full + image_cond + uncond,
                  dataclasses.replace(three, guidance_scale=7.5, image_guidance_scale=1.5))
  assert (edited != plain).any()


def test_guidance_formulas():
  rng = np.random.default_rng(0)
  full, image, uncond = (rng.normal(size=(2, V)).astype(np.float32) for _ in range(3))
  two = combine_guidance(jnp.asarray(np.concatenate([full, uncond])), 2, 3.0)
  np.testing.assert_allclose(two, uncond + 3.0 * (full - uncond), rtol=1e-5, atol=1e-5)
  three = combine_guidance(jnp.asarray(np.concatenate([full, image, uncond])), 3, 7.5, 1.5)
  np.testing.assert_allclose(three, uncond + 1.5 * (image - uncond) + 7.5 * (full - image),
                             rtol=1e-5, atol=1e-5)


def by_stream(**logits):
  """A toy tokens_to_logits that tells the guidance streams apart by their prompts, as a model
  does: `uncond` for prompts starting with <mask>, `image` for those that also hold image codes,
  `cond` for the rest. Each is a fixed [V] logit vector (the same at every step)."""
  cond, uncond = jnp.asarray(logits['cond']), jnp.asarray(logits['uncond'])
  image = jnp.asarray(logits.get('image', logits['uncond']))

  def tokens_to_logits(state):
    masked = (state.sequences[:, 0] == MASK)[:, None]
    has_image = jnp.isin(state.sequences, IMAGES).any(axis=1)[:, None]
    return jnp.where(masked, jnp.where(has_image, image, uncond), cond), state.cache

  return tokens_to_logits


def logit_vector(**values):
  """[V] logits, 0 except `t<id>=value`."""
  out = np.zeros(V, np.float32)
  for name, value in values.items():
    out[int(name[1:])] = value
  return out


def frequencies(tokens):
  return np.bincount(tokens[:, 0], minlength=V) / len(tokens)


def assert_sampled_from(tokens, probs):
  """Each token's count within 5 binomial standard deviations of `probs`."""
  rows = len(tokens)
  counts = np.bincount(tokens[:, 0], minlength=V)
  sigma = np.sqrt(rows * probs * (1 - probs))
  assert (np.abs(counts - rows * probs) <= 5 * sigma + 1).all(), (counts, rows * probs)


def test_cfg_moves_samples_toward_what_the_condition_favours_over_the_unconditional():
  # The condition likes 5 and 6 equally; the unconditional stream likes 6 as much: only 5 is
  # favoured by the condition, so s > 1 must move the samples to 5 (and away from 6).
  rows, scale = 2000, 3.0
  cond, uncond = logit_vector(t5=2.0, t6=2.0), logit_vector(t6=2.0)
  toy = by_stream(cond=cond, uncond=uncond)
  prompt = [3, BREAK]
  config = DecodingConfig(max_new_tokens=1)
  plain, _ = run(toy, [prompt] * rows, config)
  guided, _ = run(toy, [prompt] * rows + [decoding.unconditional_prompt(prompt, VOCAB)] * rows,
                  dataclasses.replace(config, guidance_scale=scale))
  before, after = frequencies(plain), frequencies(guided)
  assert abs(before[5] - before[6]) < 0.05  # Conditional sampling: no preference.
  assert after[5] > 0.8 > before[5] + 0.5 and after[6] < 0.05 < before[6] - 0.05
  assert_sampled_from(guided, softmax(uncond + scale * (cond - uncond)))


def test_three_stream_guidance_moves_samples_toward_the_image_then_the_text():
  # full likes 5, 6, 7; the image-conditioned stream 6 and 7; the unconditional one 7. The image
  # scale pushes toward what the image adds (6), the text scale toward what the text adds (5).
  rows = 2000
  full = [[3, 4, BREAK, 30, 31, 32, 33, BREAK, 5, BREAK]]
  prompts = full + [decoding.unconditional_prompt(full[0], VOCAB),
                    decoding.unconditional_prompt(full[0], VOCAB, mask_images=True)]
  f, i, u = logit_vector(t5=2, t6=2, t7=2), logit_vector(t6=2, t7=2), logit_vector(t7=2)
  toy = by_stream(cond=f, image=i, uncond=u)
  config = DecodingConfig(max_new_tokens=1, guidance_scale=1.0, image_guidance_scale=1.0)
  unit, _ = run(toy, [p for p in prompts for _ in range(rows)], config)
  image, _ = run(toy, [p for p in prompts for _ in range(rows)],
                 dataclasses.replace(config, image_guidance_scale=3.0))
  text, _ = run(toy, [p for p in prompts for _ in range(rows)],
                dataclasses.replace(config, guidance_scale=3.0))
  unit, image, text = frequencies(unit), frequencies(image), frequencies(text)
  assert image[6] > 0.8 > unit[6] + 0.5  # s_img = 3: u + 3 (i - u) + (f - i).
  assert text[5] > 0.8 > unit[5] + 0.5  # s_txt = 3: u + (i - u) + 3 (f - i).


def cd_k_candidates(logits, alpha, k):
  probs = softmax(logits)
  return set(np.flatnonzero(probs >= alpha * np.sort(probs)[-k]))


def test_cd_k_with_the_expert_as_amateur_is_uniform_over_the_candidate_set():
  # The Markov toy gives both streams the same logits once they share the current token, so
  # every candidate scores log p - log p = 0: CD-K draws uniformly from the candidate set.
  table, rows = markov_table(3, scale=1.0), 600
  config = DecodingConfig(max_new_tokens=1, cd_k_fraction=1.0, cd_k_alpha=0.5, cd_k_k=6,
                          num_decodes=rows)
  tokens, _ = run(markov(table), [[3, BREAK]] * rows + [[MASK, BREAK]] * rows, config,
                  use_cd_k=np.ones(rows, bool))
  candidates = cd_k_candidates(table[BREAK], 0.5, 6)
  counts = np.bincount(tokens[:, 0], minlength=V)
  assert set(np.flatnonzero(counts)) == candidates and len(candidates) > 2
  expected = rows / len(candidates)
  assert all(abs(counts[t] - expected) < 5 * math.sqrt(expected) for t in candidates)


def test_greedy_cd_k_with_the_expert_as_amateur_is_greedy():
  # Every candidate ties at log p - log p = 0; greedy CD-K breaks ties by the expert, so it picks
  # the expert's argmax, which is always a candidate.
  toy = markov(markov_table(3, scale=1.0))
  config = DecodingConfig(max_new_tokens=8, temperature=0, cd_k_fraction=1.0, cd_k_k=6)
  cd_k, _ = run(toy, [[3, BREAK], [MASK, BREAK]], config, use_cd_k=np.ones(1, bool))
  greedy, _ = run(toy, [[3, BREAK]], DecodingConfig(max_new_tokens=8, temperature=0))
  np.testing.assert_array_equal(cd_k, greedy)


def test_cd_k_with_a_uniform_amateur_is_greedy_over_the_candidate_set():
  expert = markov(markov_table(4))

  def toy(state):  # Expert: the Markov table; amateur (second half of the rows): uniform.
    logits, cache = expert(state)
    rows = logits.shape[0] // 2
    return logits.at[rows:].set(0.0), cache

  config = DecodingConfig(max_new_tokens=8, temperature=0, cd_k_fraction=1.0)
  cd_k, _ = run(toy, [[3, 4], [MASK]], config, use_cd_k=np.ones(1, bool))
  greedy, _ = run(expert, [[3, 4]], DecodingConfig(max_new_tokens=8, temperature=0))
  np.testing.assert_array_equal(cd_k, greedy)


def cd_k_toy():
  """Expert (conditional) logits liking 6 a little more than 5, and 7-9 less; an amateur
  (unconditional) liking 6 a lot. With the default alpha 0.1 and K 5 the candidates are 5-9, and
  5 is the one the expert favours most over the amateur."""
  expert = np.full(V, -10.0, np.float32)
  expert[[5, 6, 7, 8, 9]] = [4.0, 4.5, 2.0, 2.0, 2.0]
  amateur = logit_vector(t6=6.0)
  return expert, amateur, by_stream(cond=expert, uncond=amateur)


def test_cd_k_picks_what_the_expert_favours_over_the_amateur():
  expert, amateur, toy = cd_k_toy()
  rows = 2000
  prompts = [[3, BREAK]] * rows + [[MASK, BREAK]] * rows
  config = DecodingConfig(max_new_tokens=1, cd_k_fraction=1.0)
  assert cd_k_candidates(expert, config.cd_k_alpha, config.cd_k_k) == {5, 6, 7, 8, 9}
  cd_k, _ = run(toy, prompts, config, use_cd_k=np.ones(rows, bool))
  plain, _ = run(toy, prompts, config, use_cd_k=np.zeros(rows, bool))
  cd_k, plain = frequencies(cd_k), frequencies(plain)
  assert plain[6] > 0.5 and plain[5] < 0.4  # The expert alone prefers 6 ...
  assert cd_k[5] > 0.6 and cd_k[6] < 0.02  # ... CD-K the token the amateur does not explain,
  assert cd_k[[5, 6, 7, 8, 9]].sum() == 1.0  # and only candidates.
  greedy = dataclasses.replace(config, temperature=0)
  tokens, _ = run(toy, prompts[:1] + prompts[-1:], greedy, use_cd_k=np.ones(1, bool))
  assert tokens[0, 0] == 5
  tokens, _ = run(toy, prompts[:1] + prompts[-1:], greedy, use_cd_k=np.zeros(1, bool))
  assert tokens[0, 0] == 6


def test_mixed_batch_of_top_p_and_cd_k_rows():
  toy, rows = history(5), 40
  config = DecodingConfig(max_new_tokens=6, top_p=0.8, cd_k_fraction=0.5, guidance_scale=2.0,
                          num_decodes=rows)
  keys = jax.random.split(jax.random.key(1), rows)
  use_cd_k = np.arange(rows) >= rows // 2
  prompts = [[3, 4, BREAK]] * rows + [[MASK, BREAK]] * rows
  mixed, _ = run(toy, prompts, config, keys=keys, use_cd_k=use_cd_k)
  top_p, _ = run(toy, prompts, config, keys=keys, use_cd_k=np.zeros(rows, bool))
  cd_k, _ = run(toy, prompts, config, keys=keys, use_cd_k=np.ones(rows, bool))
  np.testing.assert_array_equal(mixed[~use_cd_k], top_p[~use_cd_k])
  np.testing.assert_array_equal(mixed[use_cd_k], cd_k[use_cd_k])
  assert (top_p[use_cd_k] != cd_k[use_cd_k]).any()


def toy_spans(generate_images=True):
  return ImageSpans(N, VOCAB.first_image_id, VOCAB.num_image_codes, BREAK, BREAK,
                    generate_images)


def test_image_spans_hold_exactly_n_codes_then_the_end_token_and_text_no_codes():
  table = markov_table(6, scale=1.0)
  table[:, IMAGES] += 2.0  # Codes are tempting everywhere, <break> often: both rules get tested.
  table[:, BREAK] += 2.5
  toy = markov(table)
  rows, steps = 64, 30
  config = DecodingConfig(max_new_tokens=steps, num_decodes=rows)
  prompts = [[3, BREAK]] * (rows // 2) + [[3, BREAK, 30, 31]] * (rows // 2)  # Whole, partial.
  tokens, _ = run(toy, prompts, config, spans=toy_spans())
  # Walk each row as the span state does, recording whether every token is what its place allows:
  # an image code inside an image, <break> once it is full, never an image code outside one.
  images_seen, allowed = 0, []
  for row, prompt in zip(tokens, prompts):
    in_image, count = True, len(prompt) - 2
    for token in row:
      if in_image and count < N:
        allowed.append(token in IMAGES)
        count += 1
      elif in_image:
        allowed.append(token == BREAK)
        in_image, images_seen = False, images_seen + 1
      else:
        allowed.append(token not in IMAGES)
        in_image, count = token == BREAK, 0
  assert len(allowed) == rows * steps and all(allowed)
  assert images_seen > rows
  text_only, _ = run(toy, prompts, config, spans=toy_spans(generate_images=False))
  assert not np.isin(text_only, IMAGES).any()


def test_image_infilling_opens_at_the_sentinel_and_closes_with_eoss():
  # A CM3 infilling prompt whose masked span is an image: the model writes the image right after
  # the final <sentinel:0>, so the sentinel opens the span and <eoss> closes it.
  sentinel, eoss = VOCAB.sentinel_id(0), VOCAB.eoss_id
  table = markov_table(9, scale=1.0)
  table[:, IMAGES] -= 3.0  # The toy prefers text: only the constraint yields codes.
  spans = ImageSpans(N, VOCAB.first_image_id, VOCAB.num_image_codes, sentinel, eoss)
  config = DecodingConfig(max_new_tokens=N + 1, num_decodes=16)
  prompt = [3, BREAK, sentinel, VOCAB.infill_id, sentinel]
  tokens, _ = run(markov(table), [prompt] * 16, config, spans=spans)
  assert np.isin(tokens[:, :N], IMAGES).all() and (tokens[:, N] == eoss).all()


def test_padded_batch_equals_each_prompt_alone():
  toy = history(7)
  prompts = [[3, 4, 5, 6, 7, 8], [9], [10, 11, 12]]
  config = DecodingConfig(max_new_tokens=9, top_k=10)
  keys = jax.random.split(jax.random.key(3), len(prompts))
  batch, _ = run(toy, prompts, config, keys=keys)
  for i, prompt in enumerate(prompts):
    alone, _ = run(toy, [prompt], config, keys=keys[i:i + 1])
    np.testing.assert_array_equal(batch[i], alone[0])


def test_left_padded_batches_are_turned_right_padded():
  left = jnp.array([[0, 0, 3, 4], [5, 6, 7, 8], [0, 0, 0, 9]])
  right = decoding.right_pad(left, jnp.array([2, 4, 1]))
  assert right.tolist() == [[3, 4, 0, 0], [5, 6, 7, 8], [9, 0, 0, 0]]


def test_stop_tokens_end_rows_which_then_emit_pad():
  table = markov_table(8, scale=1.0)
  table[:, [7, EOS]] -= 20.0  # Nothing leads to 7 or <eos>, except that 7 leads to <eos>.
  table[7, EOS] = 10.0
  toy = markov(table)
  config = DecodingConfig(max_new_tokens=6, temperature=0, stop_ids=(EOS,), pad_id=0)
  tokens, num_tokens = run(toy, [[7], [3]], config)
  assert tokens[0].tolist() == [EOS, 0, 0, 0, 0, 0] and num_tokens[0] == 1
  assert EOS not in tokens[1] and num_tokens[1] == 6


# --- a tiny Decoder ---------------------------------------------------------------------------


def tiny_model(family):
  """A tiny Decoder over the toy vocabulary and its random parameters."""
  model = Decoder(tiny_config(family=family, vocab_size=V, max_length=32))
  return model, jax.jit(lambda key: nn.meta.unbox(init_params(model, key)))(jax.random.key(0))


@pytest.fixture(scope='module')
def tiny():
  return tiny_model('chameleon')


@pytest.mark.parametrize('family', ['chameleon', 'cm3leon'])
def test_model_greedy_equals_full_forward_argmax_and_padding_is_invisible(tiny, family):
  # RoPE (chameleon) and the learned position table (cm3leon) both see each row's own positions.
  model, params = tiny if family == 'chameleon' else tiny_model(family)
  prompts = [[3, 4, 5, 6, 7, 8, 9], [10, 11], [12, 13, 14, 15]]
  config = DecodingConfig(max_new_tokens=6, temperature=0, num_decodes=2)
  batch = decoding.generate(model, params, prompts, config)
  # Full forward passes on a fixed width (one compilation); causality hides the padding.
  forward = jax.jit(lambda tokens: model.apply({'params': params}, tokens))
  for i, prompt in enumerate(prompts):
    tokens = list(prompt)
    for _ in range(6):
      logits = forward(jnp.asarray([tokens + [0] * (16 - len(tokens))]))
      tokens.append(int(jnp.argmax(logits[0, len(tokens) - 1])))
    assert batch.tokens[i, 0].tolist() == tokens[len(prompt):]
    assert batch.tokens[i, 1].tolist() == tokens[len(prompt):]


def test_model_sampled_padded_batch_equals_each_prompt_alone(tiny):
  model, params = tiny
  prompts = [[3, 4, 5, 6, 7, 8, 9], [10, 11]]
  config = DecodingConfig(max_new_tokens=5, top_p=0.95)
  keys = jax.random.split(jax.random.key(4), 2)

  @jax.jit
  def sample(rows, row_keys):
    padded, lengths = rows
    cache = decoding.prefill(model, params, padded, lengths, padded.shape[1] + 5)
    t2l = decoding.make_tokens_to_logits(model, params)
    return decode(t2l, padded, lengths, cache, row_keys, config)[0]

  def pad(rows):
    width = max(len(p) for p in rows)
    return jnp.array([p + [0] * (width - len(p)) for p in rows]), jnp.array([len(p) for p in rows])

  batch = sample(pad(prompts), keys)
  for i, prompt in enumerate(prompts):
    np.testing.assert_array_equal(batch[i], sample(pad([prompt]), keys[i:i + 1])[0])


def test_model_text_to_image_with_guidance_and_cd_k(tiny):
  model, params = tiny
  config = DecodingConfig(max_new_tokens=N + 2, guidance_scale=3.0, cd_k_fraction=0.5,
                          num_decodes=4, tokens_per_image=N, stop_ids=(BREAK,), seed=3)
  samples = decoding.generate(model, params, [[3, 4, 5, BREAK], [6, BREAK]], config, VOCAB)
  assert np.isin(samples.tokens[:, :, :N], IMAGES).all()
  assert (samples.tokens[:, :, N] == BREAK).all() and (samples.num_tokens == N + 1).all()
  again = decoding.generate(model, params, [[3, 4, 5, BREAK], [6, BREAK]], config, VOCAB)
  np.testing.assert_array_equal(samples.tokens, again.tokens)


def test_model_guidance_and_cd_k_contrast_each_prompt_with_its_masked_prompt(tiny):
  # Greedy first image code of generate() against full forward passes of each prompt and of its
  # <mask> prompt: CFG takes the argmax of c + (s - 1)(c - u), CD-K of log p_c - log p_u over its
  # candidates; on these prompts both differ from the conditional argmax.
  model, params = tiny
  forward = jax.jit(lambda tokens: model.apply({'params': params}, tokens))

  def last_logits(prompt):
    return np.asarray(forward(jnp.asarray([prompt + [0] * (16 - len(prompt))]))[0, len(prompt) - 1],
                      np.float64)

  def log_softmax(x):
    return x - x.max() - np.log(np.exp(x - x.max()).sum())

  def best(scores):  # The argmax, and that it wins by more than numerical noise.
    top = np.sort(scores[np.isfinite(scores)])
    assert top[-1] - top[-2] > 1e-3
    return int(np.argmax(scores))

  prompts, scale, image = [[6, BREAK], [9, 10, 11, BREAK]], 3.0, np.isin(np.arange(V), IMAGES)
  cfg, cd_k, plain = [], [], []
  for prompt in prompts:
    c, u = last_logits(prompt), last_logits(decoding.unconditional_prompt(prompt, VOCAB))
    plain.append(best(np.where(image, c, -np.inf)))
    cfg.append(best(np.where(image, c + (scale - 1) * (c - u), -np.inf)))
    log_c, log_u = log_softmax(np.where(image, c, -np.inf)), log_softmax(u)
    candidates = log_c >= np.log(0.1) + np.sort(log_c)[-5]
    cd_k.append(best(np.where(candidates, log_c - log_u, -np.inf)))
  assert all(g != p for g, p in zip(cfg, plain)) and all(k != p for k, p in zip(cd_k, plain))
  greedy = DecodingConfig(max_new_tokens=1, temperature=0, tokens_per_image=N)
  first = lambda config: decoding.generate(model, params, prompts, config, VOCAB).tokens[:, 0, 0]
  assert first(greedy).tolist() == plain
  assert first(dataclasses.replace(greedy, guidance_scale=scale)).tolist() == cfg
  assert first(dataclasses.replace(greedy, cd_k_fraction=1.0, cd_k_alpha=0.1,
                                   cd_k_k=5)).tolist() == cd_k


def test_three_stream_prompts_mask_text_then_everything():
  prompt = [3, 4, BREAK, 30, 31, 32, 33, BREAK, 5]
  assert decoding.unconditional_prompt(prompt, VOCAB) == [MASK, BREAK, 30, 31, 32, 33, BREAK,
                                                          MASK]
  assert decoding.unconditional_prompt(prompt, VOCAB, mask_images=True) == [
      MASK, BREAK, MASK, BREAK, MASK]


# --- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize('prompts, changes, message', [
    ([[1] * 30], dict(max_new_tokens=5), "Prompt 0 has 30 tokens; .* max_length=32"),
    ([[1, 2], []], {}, 'Prompt 1 is empty'),
    ([], {}, 'non-empty list of prompts'),
    ([[1, V]], {}, rf'token id {V} at position 1, outside .*\[0, {V}\)'),
    ([[-3, 1]], {}, 'token id -3 at position 0'),
    ([[1]], dict(guidance_scale=-1.0), r'guidance_scale must be a number in \[0, inf\)'),
    ([[1]], dict(guidance_scale=float('nan')), 'guidance_scale .* got nan'),
    ([[1]], dict(top_p=0.0), 'top_p'),
    ([[1]], dict(temperature=-1.0), 'temperature'),
])
def test_bad_input_raises_one_clear_error(tiny, prompts, changes, message):
  model, params = tiny
  with pytest.raises(DecodingError, match=message):
    decoding.generate(model, params, prompts, DecodingConfig(**{'max_new_tokens': 4, **changes}),
                      VOCAB)


def test_cd_k_rows_without_an_amateur_stream_are_refused():
  with pytest.raises(DecodingError, match='CD-K rows need the unconditional'):
    run(markov(markov_table()), [[3]], DecodingConfig(max_new_tokens=2),
        use_cd_k=np.ones(1, bool))


def test_guidance_without_a_vocabulary_is_refused(tiny):
  model, params = tiny
  with pytest.raises(DecodingError, match='pass vocab='):
    decoding.generate(model, params, [[1]], DecodingConfig(max_new_tokens=4,
                                                             guidance_scale=2.0))
