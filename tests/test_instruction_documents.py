"""Instruction documents (SFT): several texts and images in order, through the store, the seqio
task and the CM3 objective, with the loss on every token or on the outputs only."""

import dataclasses
import os

import numpy as np
import pytest
import tensorflow as tf

import data_helpers
from data_helpers import batches, examples_of
from cm3leon_jax.data import assembly, objective, store as store_lib
from cm3leon_jax.data import sft_preprocess
from cm3leon_jax.data import sft_templates as templates
from cm3leon_jax.data.synthetic import SyntheticDataset
import tasks

CODES = 16  # The shared image tokenizer's 4x4 codes.


@pytest.fixture(scope='module')
def like_split(synthetic_data_dir):
  return os.path.join(synthetic_data_dir, 'synthetic', 'train')


@pytest.fixture(scope='module')
def vocab(like_split):
  return store_lib.DocumentStore(like_split).vocabulary()


def _codes(seed):
  return np.random.default_rng(seed).integers(0, 64, CODES).astype(np.int32)


def instruction_documents(vocab, count=6):
  """Edit and VQA documents over synthetic scenes, with random codes standing for the images."""
  documents = []
  for index, example in enumerate(SyntheticDataset().examples(0, count)):
    colour = example.objects[0].colour
    if index % 2:
      parts = templates.vqa(f'what colour is the {example.objects[0].shape}', colour, index % 3)
      images = {'image': _codes(index)}
    else:
      parts = templates.edit(f'turn the {example.objects[0].shape} blue')
      images = {'input': _codes(index), 'output': _codes(100 + index)}
    documents.append(store_lib.Document(
        id=f'sft/{index}', index=index, caption_index=0, text=templates.render(parts),
        text_ids=np.zeros(0, np.int32), image_codes=np.zeros(0, np.int32),
        parts=sft_preprocess.document_parts(parts, vocab.encode, images, f'sft/{index}')))
  return documents


def _expected_tokens(document, vocab, outputs_only):
  """The document's ids and loss weights written out by hand from its parts."""
  parts = document.parts
  order = range(len(parts))
  if outputs_only:  # Output groups last: the VQA text (question + answer) after its image.
    order = sorted(order, key=lambda i: parts[i].output or (i + 1 < len(parts)
                                                            and parts[i + 1].joined))
  ids, weights = [], []
  for position, i in enumerate(order):
    weight = int(parts[i].output or not outputs_only)
    if position and not parts[i].joined:
      ids.append(vocab.break_id)
      weights.append(weight)
    part_ids = parts[i].ids + (vocab.first_image_id if parts[i].kind == store_lib.IMAGE_PART else 0)
    ids += part_ids.tolist()
    weights += [weight] * len(part_ids)
  return ids + [vocab.eos_id], weights + [1]


def test_instruction_documents_round_trip_through_the_store(vocab, tmp_path):
  documents = instruction_documents(vocab)
  path = store_lib.write_shard(str(tmp_path), 0, 1, documents)
  read = list(store_lib.read_shard(path))
  assert len(read) == len(documents)
  for got, want in zip(read, documents):
    assert got.text == want.text and len(got.parts) == len(want.parts) > 1
    for a, b in zip(got.parts, want.parts):
      assert (a.kind, a.output, a.joined) == (b.kind, b.output, b.joined)
      np.testing.assert_array_equal(a.ids, b.ids)
  # The texts decode back (this tiny vocabulary has no capitals: the instruction is lower case).
  edit = read[0]
  assert vocab.decode(edit.parts[2].ids.tolist()) == 'turn the triangle blue'
  assert [p.kind for p in edit.parts] == [store_lib.TEXT_PART, store_lib.IMAGE_PART,
                                         store_lib.TEXT_PART, store_lib.IMAGE_PART]


def test_a_store_of_format_1_reads_as_documents_without_parts(vocab, like_split, tmp_path):
  """Records written before parts existed have no part features at all."""
  document = next(store_lib.DocumentStore(like_split).documents())
  example = tf.train.Example.FromString(store_lib.to_example_bytes(document))
  for key in ('part_kinds', 'part_outputs', 'part_joined', 'part_ids', 'part_lengths'):
    del example.features.feature[key]
  old = store_lib.from_example_bytes(example.SerializeToString())
  assert old.parts == () and old.text == document.text
  np.testing.assert_array_equal(old.image_codes, document.image_codes)
  split = tmp_path / 'old' / 'train'
  data_helpers.write_split_like(split, [document], like_split, format_version=1)
  assert store_lib.DocumentStore(str(split)).num_documents == 1


@pytest.mark.parametrize('loss_on', ['all', 'outputs'])
def test_the_task_lays_out_parts_with_breaks_and_weights_them(vocab, like_split, tmp_path,
                                                              loss_on):
  documents = instruction_documents(vocab)
  data_helpers.write_split_like(tmp_path / 'sft' / 'train', documents, like_split)
  config = assembly.AssemblyConfig(masking_rate=0.0, loss_on=loss_on)
  tasks.register_store_task('test_sft', str(tmp_path / 'sft'), assembly_config=config)
  got = sorted((t.tolist(), w.tolist()) for t, w in examples_of(batches('test_sft')))
  want = sorted(_expected_tokens(d, vocab, loss_on == 'outputs') for d in documents)
  assert got == want


def test_masked_spans_carry_their_weights_to_the_end(vocab):
  """With the CM3 rearrangement, restoring the example gives back the tokens and the weights."""
  layout = assembly.TokenLayout.from_vocabulary(vocab)
  config = assembly.AssemblyConfig(loss_on='outputs', cm3=objective.CM3Config(max_spans=3))
  documents = instruction_documents(vocab)
  seen_moved_output = seen_moved_prompt = False
  for seed in range(40):
    document = documents[seed % len(documents)]
    parts = assembly.PartsTokens([p.kind == store_lib.IMAGE_PART for p in document.parts],
                                 [p.output for p in document.parts],
                                 [p.joined for p in document.parts], [p.ids for p in document.parts])
    plain, plain_weights = assembly.parts_tokens(parts, layout, outputs_only=True)
    rng = np.random.default_rng(seed)
    result = objective.rearrange(plain, rng, layout.cm3, config.cm3, num_spans=2,
                                 token_weights=plain_weights)
    np.testing.assert_array_equal(objective.restore(result.tokens, layout.cm3, config.cm3), plain)
    tail = result.tokens.tolist().index(vocab.infill_id) + 1
    moved_weights = result.loss_weights[tail:]
    for span, start in zip(result.spans, _span_starts(result.tokens, tail, vocab)):
      span_weight = plain_weights[span.start:span.end]
      np.testing.assert_array_equal(result.loss_weights[start + 1:start + 1 + len(span_weight)],
                                    span_weight)
      # The span's second sentinel and its <eoss> weigh as its tokens do.
      assert result.loss_weights[start] == result.loss_weights[start + 1 + len(span_weight)] == \
          span_weight.max()
      seen_moved_output |= span_weight.max() == 1
      seen_moved_prompt |= span_weight.max() == 0
    assert len(moved_weights) == sum(s.end - s.start + 2 for s in result.spans)
  assert seen_moved_output and seen_moved_prompt


def _span_starts(tokens, tail, vocab):
  """Positions of the moved spans' sentinels after <infill>."""
  starts, position = [], tail
  while position < len(tokens):
    starts.append(position)
    position = tokens.tolist().index(vocab.eoss_id, position) + 1
  return starts


def test_an_instruction_document_longer_than_the_example_gives_none(vocab):
  layout = assembly.TokenLayout.from_vocabulary(vocab)
  document = instruction_documents(vocab, 1)[0]
  parts = assembly.PartsTokens([p.kind == store_lib.IMAGE_PART for p in document.parts],
                               [p.output for p in document.parts],
                               [p.joined for p in document.parts], [p.ids for p in document.parts])
  length = len(assembly.parts_tokens(parts, layout, False)[0])
  config = assembly.AssemblyConfig(masking_rate=0.0)
  fits = assembly.assemble(parts, [], length + 1, np.random.default_rng(0), layout, config)
  assert fits is not None and len(fits[0]) == length + 1
  assert assembly.assemble(parts, [], length, np.random.default_rng(0), layout, config) is None
