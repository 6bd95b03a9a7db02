"""A 'chameleon'-family model trained here, exported as a transformers Chameleon folder:
transformers loads it and generates our tokens, its tokenizer.json encodes as our vocabulary,
and the export loads back to the same parameters and vocabulary."""

import contextlib
import random

import numpy as np
import pytest
import tokenizers
import torch
from transformers import ChameleonForConditionalGeneration

import jax
import sentencepiece as spm

from cm3leon_jax import gin_utils
from cm3leon_jax import train as train_lib
from cm3leon_jax.cli import train_text_tokenizer
from cm3leon_jax.decoding import DecodingConfig, generate, generation
from cm3leon_jax.decoding.export import export_model
from cm3leon_jax.decoding.pretrained import Pretrained
from cm3leon_jax.interop import hf_chameleon_vqvae
from cm3leon_jax.tokenizers.chameleon import image_token_name
from cm3leon_jax.tokenizers.sentencepiece_json import tokenizer_from_sentencepiece
import shared_data
import tasks

CAPTION = 'a large red circle'
RUN_GIN = """
from __gin__ import dynamic_registration
from cm3leon_jax.training import optimizer
from cm3leon_jax import partitioning
from cm3leon_jax import train
from cm3leon_jax.models import config
from cm3leon_jax.data import store_tasks

store_tasks.register_store_task.shuffle_buffer_size = 128

train.train:
  model_config = @config.DecoderConfig()
  mixture_or_task_name = 'cm3leon_synthetic'
  task_feature_lengths = {'targets': 64}
  batch_size = 8
  train_steps = 60
  optimizer_config = @optimizer.OptimizerConfig()
  checkpoint_every = 60
  eval_every = 60
  eval_batches = 1
  log_every = 20
  mesh_config = @partitioning.MeshConfig()
  async_checkpoints = False
optimizer.OptimizerConfig:
  peak_learning_rate = 3e-3
  warmup_steps = 2
config.DecoderConfig:
  family = 'chameleon'
  vocab_size = 512
  num_layers = 2
  embed_dim = 64
  num_heads = 4
  num_kv_heads = 2
  mlp_dim = 96
  qk_norm = True
  max_length = 96
  dtype = 'float32'
"""


# --- the tokenizer file -------------------------------------------------------------------------
def _texts():
  """Captions, whitespace and unicode edge cases, and random strings with unknown characters."""
  rng = random.Random(0)
  alphabet = 'abcdefgh ijklmnopqrstuvwxyz  ABC.,:;!?-0123456789\u00e9\u00fc\u6771\U0001f642\t\n'
  return (train_text_tokenizer.synthetic_captions(100) +
          ['', ' ', '  leading and trailing  ', 'tabs\tand\nnew lines', 'Caf\u00e9 na\u00efve',
           '\ufb01 ligature \u2460 \u00bd \uff21\uff22', 'a  red   circle', 'x' * 50,
           '\u00a0no-break\u3000ideographic spaces'] +
          [''.join(rng.choice(alphabet) for _ in range(rng.randint(1, 40))) for _ in range(200)])


@pytest.fixture(scope='module', params=[('bpe', False), ('bpe', True), ('unigram', False),
                                        ('unigram', True)],
                ids=['bpe', 'bpe_byte_fallback', 'unigram', 'unigram_byte_fallback'])
def sentencepiece_model(request, tmp_path_factory):
  model_type, byte_fallback = request.param
  prefix = str(tmp_path_factory.mktemp('spm') / 'text')
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(train_text_tokenizer.synthetic_captions(500)), model_prefix=prefix,
      vocab_size=400 if byte_fallback else 140, model_type=model_type, pad_id=0, eos_id=1,
      unk_id=2, bos_id=-1, character_coverage=1.0, hard_vocab_limit=False, minloglevel=2,
      byte_fallback=byte_fallback)
  return prefix + '.model', byte_fallback


def test_the_converted_sentencepiece_model_encodes_every_text_to_the_same_ids(sentencepiece_model):
  path, byte_fallback = sentencepiece_model
  processor = spm.SentencePieceProcessor(model_file=path)
  converted = tokenizer_from_sentencepiece(path)
  ours = [processor.encode(text) for text in _texts()]
  theirs = [converted.encode(text, add_special_tokens=False).ids for text in _texts()]
  for text, a, b in zip(_texts(), ours, theirs):
    assert a == b, repr(text)
  # The texts reach the paths that differ between models: unknown characters and byte pieces.
  fallback = {processor.piece_to_id('<0xE6>')} if byte_fallback else {processor.unk_id()}
  assert any(fallback & set(ids) for ids in ours)
  # Decoding restores texts whose characters all have pieces.
  assert converted.decode(theirs[0]) == processor.decode(ours[0]) == _texts()[0]


def test_special_names_inside_a_text_are_read_as_those_tokens(sentencepiece_model):
  path, _ = sentencepiece_model
  # SentencePiece spells '</s>' out; tokenizers, like transformers' converted tokenizers, reads
  # the end token: the one known difference (docs/chameleon.md).
  assert tokenizer_from_sentencepiece(path).encode('</s>', add_special_tokens=False).ids == [1]
  assert spm.SentencePieceProcessor(model_file=path).encode('</s>') != [1]


# --- the export of a trained run ----------------------------------------------------------------
@pytest.fixture(scope='module')
def trained(tmp_path_factory, synthetic_data_dir):
  """A 6-step 'chameleon' run on the synthetic store, once per test run."""

  def build(folder):
    gin_file = tmp_path_factory.mktemp('gin') / 'run.gin'
    gin_file.write_text(RUN_GIN)
    gin_utils.parse([str(gin_file)], [])
    tasks.register_standard_tasks(synthetic_data_dir)
    train_lib.train(folder)

  return Pretrained.load(shared_data.cached_folder(tmp_path_factory, 'chameleon_run', build))


@pytest.fixture(scope='module')
def exported(trained, tmp_path_factory):
  """(export folder, transformers' model of it)."""
  folder = export_model(trained, str(tmp_path_factory.mktemp('export') / 'chameleon'))
  model, info = ChameleonForConditionalGeneration.from_pretrained(
      folder, output_loading_info=True, attn_implementation='eager')
  assert not info['missing_keys'] and not info['unexpected_keys'], info
  return folder, model.eval()


def test_the_export_loads_back_to_the_same_parameters_and_vocabulary(trained, exported):
  back = Pretrained.load(exported[0])
  assert back.model.config == trained.model.config
  assert jax.tree.structure(back.params) == jax.tree.structure(trained.params)
  jax.tree.map(np.testing.assert_array_equal, back.params, trained.params)
  # The same SentencePiece model (seqio's equality compares file paths), specials and codes.
  assert back.vocab.text_vocabulary.sp_model == trained.vocab.text_vocabulary.sp_model
  assert (back.vocab.special_names, back.vocab.num_image_codes, back.vocab.vocab_size) == (
      trained.vocab.special_names, trained.vocab.num_image_codes, trained.vocab.vocab_size)
  assert back.vocab.encode(CAPTION) == trained.vocab.encode(CAPTION)


def test_the_tokenizer_file_gives_every_id_its_meaning(trained, exported):
  vocab = trained.vocab
  tokenizer = tokenizers.Tokenizer.from_file(f'{exported[0]}/tokenizer.json')
  for text in _texts()[:100]:
    assert tokenizer.encode(text, add_special_tokens=False).ids == vocab.encode(text), text
  for name in vocab.special_names:
    assert tokenizer.token_to_id(name) == vocab.special_id(name)
  codes = np.arange(vocab.num_image_codes)
  assert [tokenizer.token_to_id(image_token_name(c)) for c in codes] == \
      vocab.image_ids(codes).tolist()
  assert tokenizer.get_vocab_size() == vocab.vocab_size
  # transformers reads the image ids from the same names, through the config's vocabulary_map.
  mapping = exported[1].model.vocabulary_mapping
  assert mapping.image_tokens == vocab.image_ids(codes).tolist()
  assert [mapping.img2bpe[c] for c in codes] == vocab.image_ids(codes).tolist()


@contextlib.contextmanager
def _image_masking_undone(model):
  """transformers' Chameleon sets the logits of image tokens to the minimum in every forward
  pass; with an empty list to mask, its logits are lm_head's, as ours."""
  model.model.vocabulary_mapping.image_tokens = []
  try:
    yield model
  finally:
    del model.model.vocabulary_mapping.image_tokens  # Back to the cached property.


def test_transformers_logits_equal_ours_on_text_and_images(trained, exported):
  vocab = trained.vocab
  image = vocab.image_ids(np.arange(trained.tokens_per_image) * 5 % vocab.num_image_codes)
  tokens = vocab.encode(CAPTION) + [vocab.break_id] + image.tolist() + [vocab.break_id]
  ours = trained.model.apply({'params': trained.params}, np.array([tokens]))
  with _image_masking_undone(exported[1]) as model, torch.no_grad():
    theirs = model(torch.tensor([tokens])).logits.numpy()
  assert np.asarray(ours).std() > 0.1
  np.testing.assert_allclose(np.asarray(ours), theirs, atol=1e-4, rtol=1e-4)


def test_transformers_generates_our_greedy_image(trained, exported):
  vocab, tokens = trained.vocab, trained.tokens_per_image
  _, ids = generation.text_to_image(trained, [CAPTION], DecodingConfig(temperature=0.0))
  prompt = vocab.encode(CAPTION) + [vocab.break_id]
  image_ids = vocab.image_ids(np.arange(vocab.num_image_codes)).tolist()

  def allowed(_, ids):  # Our image span: `tokens` image tokens, then the closing <break>.
    return image_ids if len(ids) - len(prompt) < tokens else [vocab.break_id]

  with _image_masking_undone(exported[1]) as model, torch.no_grad():
    out = model.generate(torch.tensor([prompt]), max_new_tokens=tokens + 1, do_sample=False,
                         prefix_allowed_tokens_fn=allowed)
  theirs = out[0, len(prompt):].tolist()
  assert theirs[:-1] == ids[0, 0].tolist() and theirs[-1] == vocab.break_id
  assert len(set(theirs[:-1])) > 2  # Not one code repeated: the logits decide.


def test_transformers_generates_our_greedy_text_after_an_image(trained, exported):
  vocab = trained.vocab
  image = vocab.image_ids(np.arange(trained.tokens_per_image) * 3 % vocab.num_image_codes)
  prompt = image.tolist() + [vocab.break_id] + vocab.encode('a large')
  config = DecodingConfig(max_new_tokens=10, temperature=0.0, generate_images=False,
                          stop_ids=(vocab.eos_id,), pad_id=vocab.eos_id,
                          tokens_per_image=trained.tokens_per_image)
  samples = generate(trained.model, trained.params, [prompt], config, vocab)
  ours = samples.tokens[0, 0, :samples.num_tokens[0, 0]].tolist()
  with torch.no_grad():  # transformers' own generate (its masking of image tokens as it is),
    # which stops at the config's end id as ours does.
    out = exported[1].generate(torch.tensor([prompt]), max_new_tokens=10, do_sample=False)
  assert out[0, len(prompt):].tolist() == ours and ours[-1] == vocab.eos_id
  assert len(set(ours)) > 2


def test_transformers_vq_encoder_gives_our_image_tokens(trained, exported):
  pixels = np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
  ours = trained.encode_images(pixels)
  with torch.no_grad():
    theirs = exported[1].get_image_tokens(torch.from_numpy(pixels).permute(0, 3, 1, 2))
  np.testing.assert_array_equal(theirs.numpy(), ours)
  assert len(np.unique(ours)) > 2
  config = hf_chameleon_vqvae.config_from_hf(exported[1].config.vq_config.to_dict())
  assert config == trained.image_tokenizer.config
