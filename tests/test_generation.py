"""The generation tasks on a random tiny model: shapes, modality, guidance, and clear errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import model_and_params, tiny_config
from cm3leon_jax.decoding import generation
from cm3leon_jax.data import objective
from cm3leon_jax.data.store import text_vocabulary
from cm3leon_jax.decoding import DecodingConfig, DecodingError, unconditional_prompt
from cm3leon_jax.decoding.pretrained import Pretrained, PretrainedError
from cm3leon_jax.tokenizers.multimodal import MultimodalVocabulary

SAMPLING = DecodingConfig(temperature=1.0, top_p=0.9, num_decodes=2, seed=3)
N = 16  # The test tokenizer: 32 px -> 4 x 4 codes.


@pytest.fixture(scope='module')
def pretrained(tmp_path_factory, shared_tokenizers):
  text, image_tokenizer = shared_tokenizers
  vocab = MultimodalVocabulary(text_vocabulary(text), num_image_codes=64, num_sentinels=8)
  model, params = model_and_params(tiny_config(vocab_size=vocab.vocab_size, max_length=96))
  return Pretrained(model, params, vocab, objective.CM3Config(), image_tokenizer,
                    str(tmp_path_factory.mktemp('generation')))


def test_text_to_image_gives_images_of_exactly_n_codes(pretrained):
  images, ids = generation.text_to_image(pretrained, ['a large red circle', 'a small blue square'],
                                         SAMPLING)
  assert images.shape == (2, 2, 32, 32, 3) and images.dtype == np.uint8
  assert ids.shape == (2, 2, N) and pretrained.vocab.is_image(ids).all()


def test_guidance_scale_one_equals_no_guidance_and_masks_with_the_training_sentinel(pretrained):
  captions = ['a large red circle']
  _, plain = generation.text_to_image(pretrained, captions, SAMPLING)
  _, guided = generation.text_to_image(
      pretrained, captions, DecodingConfig(**{**SAMPLING.__dict__, 'guidance_scale': 1.0}))
  np.testing.assert_array_equal(plain, guided)
  vocab = pretrained.vocab
  prompt = list(vocab.text_vocabulary.encode('a red circle')) + [vocab.break_id]
  sentinel = generation.mask_token(pretrained)
  assert sentinel == vocab.sentinel_id(0)  # The default CM3 objective's enumerated sentinels.
  assert unconditional_prompt(prompt, vocab, mask_id=sentinel) == [sentinel, vocab.break_id]


def test_unconditional_images_are_what_the_unconditional_stream_draws(pretrained):
  # Guidance at scale 0 follows the unconditional stream alone (u + 0 (c - u)): greedy, it draws
  # what the masked prompt draws without guidance, whatever the caption.
  greedy = DecodingConfig(temperature=0.0, num_decodes=1)
  images, ids = generation.unconditional_images(pretrained, 2, greedy)
  assert images.shape == (2, 32, 32, 3) and ids.shape == (2, N)
  assert pretrained.vocab.is_image(ids).all()
  _, guided = generation.text_to_image(
      pretrained, ['a large red circle', 'a small blue square'],
      DecodingConfig(temperature=0.0, num_decodes=1, guidance_scale=0.0))
  np.testing.assert_array_equal(guided[:, 0], ids)
  _, conditional = generation.text_to_image(pretrained, ['a large red circle'], greedy)
  assert not np.array_equal(conditional[0, 0], ids[0])  # The caption does change the drawing.
  sampled, _ = generation.unconditional_images(pretrained, 3, SAMPLING)
  assert len({image.tobytes() for image in sampled}) > 1  # `count` samples, not one repeated.


def test_guided_text_to_image_contrasts_the_caption_with_the_sentinel_prompt(pretrained):
  # Greedy CFG's first code against full forward passes: the argmax over image codes of
  # c + (s - 1)(c - u), u the logits after <sentinel:0> <break>. On these captions it differs
  # from the conditional argmax and from what <mask> as the unconditional prompt would give.
  vocab, model, params = pretrained.vocab, pretrained.model, pretrained.params
  forward = jax.jit(lambda tokens: model.apply({'params': params}, tokens))
  image = vocab.is_image(np.arange(vocab.vocab_size))

  def last_logits(prompt):
    logits = forward(jnp.asarray([list(prompt) + [0] * (32 - len(prompt))]))[0, len(prompt) - 1]
    return np.asarray(logits, np.float64)

  def best(scores):
    scores = np.where(image, scores, -np.inf)
    top = np.sort(scores[image])
    return int(np.argmax(scores)), top[-1] - top[-2]

  captions, scale = ['a small blue square', 'a green triangle'], 3.0
  with_sentinel = last_logits([vocab.sentinel_id(0), vocab.break_id])
  with_mask = last_logits([vocab.mask_id, vocab.break_id])
  expected = []
  for caption in captions:
    c = last_logits(list(vocab.text_vocabulary.encode(caption)) + [vocab.break_id])
    token, margin = best(c + (scale - 1) * (c - with_sentinel))
    assert margin > 1e-3
    assert token not in (best(c)[0], best(c + (scale - 1) * (c - with_mask))[0])
    expected.append(token)
  _, ids = generation.text_to_image(
      pretrained, captions, DecodingConfig(temperature=0.0, guidance_scale=scale))
  assert ids[:, 0, 0].tolist() == expected


def test_caption_answer_and_text_infilling_emit_text_only(pretrained, monkeypatch):
  vocab = pretrained.vocab
  generated = []  # The token ids of every generate() call the tasks make.
  real_generate = generation.generate
  monkeypatch.setattr(generation, 'generate', lambda *args, **kwargs: generated.append(
      real_generate(*args, **kwargs)) or generated[-1])

  def check_ids(ids):
    """No image code anywhere, and there is text to check (the random model does emit text
    ids); returns each sample's text ids, up to its first non-text id."""
    ids = np.asarray(ids).reshape(-1, ids.shape[-1])
    assert ids.size and not vocab.is_image(ids).any(), ids
    text_ids = [sample[:(list(sample >= vocab.num_text) + [True]).index(True)] for sample in ids]
    assert sum(map(len, text_ids)) >= ids.size // 4, ids
    return text_ids

  def check_texts(ids, texts):
    """`check_ids`, and each returned text is exactly its sample's text ids decoded."""
    assert texts == [vocab.text_vocabulary.decode(t.tolist()) for t in check_ids(ids)]

  image = vocab.image_ids(np.arange(N).reshape(1, N) % 64)
  greedy = DecodingConfig(temperature=0.0)
  captions = generation.caption(pretrained, np.concatenate([image, image]), greedy, 8)
  assert len(captions) == 2 and captions[0] == captions[1]
  check_texts(generated[-1].tokens, [c for row in captions for c in row])
  # Sampling from the random model would pick an image code for about a quarter of its tokens.
  sampled = DecodingConfig(temperature=1.0, num_decodes=8, seed=1)
  captions = generation.caption(pretrained, image, sampled, 8)
  assert len(captions) == 1 and len(captions[0]) == 8
  check_texts(generated[-1].tokens, captions[0])
  answers = generation.answer(pretrained, image, ['what colour is it?'], greedy, 6)
  assert len(answers) == 1
  check_texts(generated[-1].tokens, answers[0])
  document = np.concatenate([vocab.text_vocabulary.encode('a red circle'), [vocab.break_id],
                             image[0]])
  text_span = (0, len(document) - N - 1)
  filled = generation.infill(pretrained, document, text_span, sampled, max_text_tokens=8)
  assert filled.shape == (8, 8)
  np.testing.assert_array_equal(filled, generated[-1].tokens[0])
  check_ids(filled)
  assert len(generated) == 4


def test_image_infilling_gives_n_codes(pretrained):
  vocab = pretrained.vocab
  text = vocab.text_vocabulary.encode('a red circle')
  document = np.concatenate([text, [vocab.break_id], vocab.image_ids(np.zeros(N, int))])
  filled = generation.infill(pretrained, document, (len(text) + 1, len(document)), SAMPLING)
  assert filled.shape == (2, N) and vocab.is_image(filled).all()


def test_rerank_orders_by_clip_similarity():
  class FakeEncoder:
    def embed_images(self, images):
      return np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])

    def embed_texts(self, texts):
      return np.array([[0.0, 1.0]])

  order = generation.rerank(FakeEncoder(), np.zeros((3, 4, 4, 3), np.uint8), 'a caption')
  assert order.tolist() == [1, 2, 0]


def test_clear_errors(pretrained, tmp_path):
  with pytest.raises(DecodingError, match='Caption 1 is empty'):
    generation.text_to_image(pretrained, ['a red circle', ' '], SAMPLING)
  with pytest.raises(PretrainedError, match='no model.json'):
    Pretrained.load(str(tmp_path))
  without_tokenizer = Pretrained(pretrained.model, pretrained.params, pretrained.vocab,
                                 pretrained.cm3, None, str(tmp_path))
  with pytest.raises(PretrainedError, match='names no image tokenizer'):
    generation.text_to_image(without_tokenizer, ['a red circle'], SAMPLING)
  with pytest.raises(DecodingError, match='guidance_scale'):
    DecodingConfig(guidance_scale=float('nan'))
