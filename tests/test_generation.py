"""The generation tasks on a random tiny model: shapes, modality, guidance, and clear errors."""

import numpy as np
import pytest

import data_helpers
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
def pretrained(tmp_path_factory):
  root = tmp_path_factory.mktemp('generation')
  vocab = MultimodalVocabulary(text_vocabulary(data_helpers.make_text_vocabulary(root)),
                               num_image_codes=64, num_sentinels=8)
  model, params = model_and_params(tiny_config(vocab_size=vocab.vocab_size, max_length=96))
  return Pretrained(model, params, vocab, objective.CM3Config(),
                    data_helpers.make_image_tokenizer(root), str(root))


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


def test_caption_answer_and_text_infilling_emit_text_only(pretrained):
  vocab = pretrained.vocab
  image = vocab.image_ids(np.arange(N).reshape(1, N) % 64)
  greedy = DecodingConfig(temperature=0.0)
  captions = generation.caption(pretrained, np.concatenate([image, image]), greedy, 8)
  assert len(captions) == 2 and captions[0] == captions[1] and isinstance(captions[0][0], str)
  answers = generation.answer(pretrained, image, ['what colour is it?'], greedy, 6)
  assert len(answers) == 1 and isinstance(answers[0][0], str)
  document = np.concatenate([vocab.text_vocabulary.encode('a red circle'), [vocab.break_id],
                             image[0]])
  text_span = (0, len(document) - N - 1)
  filled = generation.infill(pretrained, document, text_span, greedy, max_text_tokens=8)
  assert not vocab.is_image(filled).any()


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
