"""Decoding the instruction tasks: each prompt is the training document's tokens up to its
output, in both training layouts, and the tasks decode through guidance as the paper sets it."""

import dataclasses

import numpy as np
import pytest

from helpers import model_and_params, tiny_config
from cm3leon_jax.data import assembly, objective
from cm3leon_jax.data import sft_templates as templates
from cm3leon_jax.data.store import text_vocabulary
from cm3leon_jax.decoding import DecodingConfig, generate, instructions
from cm3leon_jax.decoding.pretrained import Pretrained
from cm3leon_jax.tokenizers.multimodal import MultimodalVocabulary

N = 16  # The test tokenizer: 32 px -> 4 x 4 codes.


@pytest.fixture(scope='module')
def pretrained(tmp_path_factory, shared_tokenizers):
  text, image_tokenizer = shared_tokenizers
  vocab = MultimodalVocabulary(text_vocabulary(text), num_image_codes=64, num_sentinels=8)
  model, params = model_and_params(tiny_config(vocab_size=vocab.vocab_size, max_length=160))
  return Pretrained(model, params, vocab, objective.CM3Config(), image_tokenizer,
                    str(tmp_path_factory.mktemp('instructions')))


def _codes(seed):
  return np.random.default_rng(seed).integers(0, 64, N)


def _training_tokens(vocab, parts, codes, loss_on):
  """The document as training lays it out (data.assembly), images given as raw codes."""
  ids = [np.asarray(codes[p.name]) if isinstance(p, templates.ImagePart)
         else np.asarray(vocab.text_vocabulary.encode(p.text)) for p in parts]
  tokens = assembly.PartsTokens([isinstance(p, templates.ImagePart) for p in parts],
                                [p.output for p in parts],
                                [isinstance(p, templates.TextPart) and p.joined for p in parts], ids)
  layout = assembly.TokenLayout.from_vocabulary(vocab)
  return assembly.parts_tokens(tokens, layout, outputs_only=loss_on == 'outputs')[0].tolist()


IMAGE_TASKS = {
    'edit': (templates.edit('turn the circle blue'), {'input': _codes(0), 'output': _codes(1)}),
    'control': (templates.control('canny', 'a red circle'),
                {'control': _codes(2), 'output': _codes(3)}),
    'ground': (templates.grounded('a red circle', [('red circle', (4, 4, 20, 20))], 32),
               {'output': _codes(4)}),
    'render': (templates.render_text('stop'), {'output': _codes(5)}),
}


@pytest.mark.parametrize('loss_on', ['all', 'outputs'])
@pytest.mark.parametrize('task', sorted(IMAGE_TASKS))
def test_image_prompts_are_the_training_document_up_to_its_output(pretrained, task, loss_on):
  parts, codes = IMAGE_TASKS[task]
  vocab = pretrained.vocab
  model = dataclasses.replace(pretrained, loss_on=loss_on)
  given = {name: vocab.image_ids(c) for name, c in codes.items() if name != 'output'}
  prompt = instructions._image_prompt(model, parts, given)  # pylint: disable=protected-access
  training = _training_tokens(vocab, parts, codes, loss_on)
  assert training[len(training) - N:] == vocab.image_ids(codes['output']).tolist()
  assert prompt == training[:len(training) - N] and prompt[-1] == vocab.break_id


def test_vqa_prompts_continue_or_infill_the_answer_as_training_placed_it(pretrained):
  vocab = pretrained.vocab
  image = _codes(6)
  for style in range(3):
    parts = templates.vqa('what colour is the circle?', 'red', style)
    answer = vocab.text_vocabulary.encode(parts[1].text)
    # Outputs last: image <break> question answer; the prompt stops where the answer starts.
    training = _training_tokens(vocab, parts, {'image': image}, 'outputs')
    prompt = instructions._text_prompt(  # pylint: disable=protected-access
        dataclasses.replace(pretrained, loss_on='outputs'),
        templates.vqa('what colour is the circle?', 'a', style), {'image': vocab.image_ids(image)})
    assert training[:len(prompt)] == prompt and training[len(prompt):] == list(answer)
    # Every token trained: question answer <break> image; the answer is infilled.
    training = np.array(_training_tokens(vocab, parts, {'image': image}, 'all'))
    start = len(vocab.text_vocabulary.encode(parts[0].text))
    want = objective.infilling_prompt(training, (start, start + len(answer)),
                                      objective.CM3Tokens.from_vocabulary(vocab), pretrained.cm3)
    prompt = instructions._text_prompt(  # pylint: disable=protected-access
        pretrained, templates.vqa('what colour is the circle?', 'a', style),
        {'image': vocab.image_ids(image)})
    assert prompt == want.tolist()


def test_editing_decodes_n_codes_with_the_papers_three_stream_guidance(pretrained):
  vocab = pretrained.vocab
  inputs = np.stack([vocab.image_ids(_codes(7)), vocab.image_ids(_codes(8))])
  greedy = dataclasses.replace(instructions.EDIT_DECODING, temperature=0.0)
  images, ids = instructions.edit_images(pretrained, inputs, ['turn it blue', 'remove it'], greedy)
  assert images.shape == (2, 1, 32, 32, 3) and ids.shape == (2, 1, N)
  assert vocab.is_image(ids).all()
  assert (instructions.EDIT_DECODING.guidance_scale,
          instructions.EDIT_DECODING.image_guidance_scale) == (7.5, 1.5)
  prompt = instructions._image_prompt(  # pylint: disable=protected-access
      pretrained, templates.edit('turn it blue'), {'input': inputs[0]})
  config = dataclasses.replace(greedy, max_new_tokens=N, tokens_per_image=N, generate_images=True,
                               image_open_id=None, image_close_id=None, stop_ids=(),
                               uncond_mask_id=vocab.sentinel_id(0))
  direct = generate(pretrained.model, pretrained.params, [prompt], config, vocab)
  np.testing.assert_array_equal(ids[0], direct.tokens[0][:, :N])


def test_captions_and_answers_are_text(pretrained):
  vocab = pretrained.vocab
  images = np.stack([vocab.image_ids(_codes(9))])
  config = DecodingConfig(temperature=0.0, num_decodes=2)
  (captions,) = instructions.instructed_captions(pretrained, images, config, max_new_tokens=6)
  (answers,) = instructions.vqa_answers(pretrained, images, ['what shape is it?'], config,
                                        max_new_tokens=6)
  assert len(captions) == len(answers) == 2
  assert all(isinstance(text, str) for text in captions + answers)
  with pytest.raises(instructions.DecodingError, match=r'image ids \[P, N\]'):
    instructions.vqa_answers(pretrained, images[0], ['what?'], config)
