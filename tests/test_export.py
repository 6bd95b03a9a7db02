"""Exported model folders: they load back to the same model, transformers reads them, errors."""

import json
import os

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from helpers import model_and_params, run_tool, tiny_config
from cm3leon_jax.decoding import generation
from cm3leon_jax.data import objective
from cm3leon_jax.data.store import text_vocabulary
from cm3leon_jax.decoding import DecodingConfig
from cm3leon_jax.decoding.export import export_model
from cm3leon_jax.interop.layers_tree import unstack_layers
from cm3leon_jax.decoding.pretrained import Pretrained, PretrainedError
from cm3leon_jax.tokenizers.multimodal import MultimodalVocabulary

SAMPLING = DecodingConfig(temperature=1.0, top_p=0.9, num_decodes=2, seed=3)


@pytest.fixture(scope='module')
def parts(tmp_path_factory, shared_tokenizers):
  text, image_tokenizer = shared_tokenizers
  vocab = MultimodalVocabulary(text_vocabulary(text), num_image_codes=64, num_sentinels=8)
  return tmp_path_factory.mktemp('export'), vocab, image_tokenizer


def a_model(parts, family='cm3leon', cm3=objective.CM3Config()) -> Pretrained:
  root, vocab, tokenizer = parts
  model, params = model_and_params(tiny_config(family, vocab_size=vocab.vocab_size,
                                               max_length=96))
  return Pretrained(model, params, vocab, cm3, tokenizer, str(root))


def assert_same_leaves(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  jax.tree.map(np.testing.assert_array_equal, a, b)


@pytest.mark.parametrize('family', ['cm3leon', 'chameleon'])
def test_an_export_loads_back_to_the_same_model_and_samples(parts, tmp_path, family):
  model = a_model(parts, family, objective.CM3Config(sentinel_style='mask'))
  folder = export_model(model, str(tmp_path / 'exported'))
  stored = Pretrained.load(folder, unroll_layers=False)
  assert stored.model.config == model.model.config
  assert_same_leaves(stored.params, model.params)
  exported = Pretrained.load(folder)  # For decoding, the scanned blocks come unrolled.
  assert exported.model.config == model.model.config.replace(scan_layers=False)
  assert_same_leaves(exported.params, unstack_layers(model.params, model.model.config.num_layers))
  assert exported.cm3 == model.cm3
  assert exported.vocab.vocab_size == model.vocab.vocab_size
  assert exported.vocab.encode('a red circle') == model.vocab.encode('a red circle')
  # The tokenizer is a copy inside the folder, named relative to it.
  assert exported.image_tokenizer_path == str(tmp_path / 'exported' / 'image_tokenizer')
  assert_same_leaves(exported.image_tokenizer.params, model.image_tokenizer.params)
  _, ids = generation.text_to_image(stored, ['a large red circle'], SAMPLING)
  _, expected = generation.text_to_image(model, ['a large red circle'], SAMPLING)
  np.testing.assert_array_equal(ids, expected)
  tokens = jnp.asarray([model.vocab.encode('a small blue square')])
  np.testing.assert_allclose(exported.model.apply({'params': exported.params}, tokens),
                             model.model.apply({'params': model.params}, tokens), atol=1e-5)


def test_a_bfloat16_export_is_half_the_size_and_rounds_the_weights(parts, tmp_path):
  model = a_model(parts)
  full = export_model(model, str(tmp_path / 'full'))
  half = export_model(model, str(tmp_path / 'half'), dtype='bfloat16')
  sizes = [os.path.getsize(os.path.join(d, 'model.safetensors')) for d in (full, half)]
  assert sizes[1] < 0.51 * sizes[0]
  loaded = Pretrained.load(half, unroll_layers=False)
  rounded = jax.tree.map(lambda x: np.asarray(x).astype(ml_dtypes.bfloat16).astype(np.float32),
                         model.params)
  assert_same_leaves(loaded.params, rounded)
  with open(os.path.join(half, 'model.json')) as f:
    assert json.load(f)['weights'] == {'format': 'cm3leon', 'dtype': 'bfloat16'}


def test_transformers_opt_reads_the_exported_decoder(parts, tmp_path):
  pytest.importorskip('transformers')
  model = a_model(parts)
  folder = export_model(model, str(tmp_path / 'exported'))
  tokens = np.array([model.vocab.encode('a small blue square') + [5, 6, 7]])
  np.save(tmp_path / 'tokens.npy', tokens)
  # In its own process: transformers imported after TensorFlow (this process has it) can crash.
  script = ('import sys, numpy as np, torch, transformers\n'
            'model = transformers.OPTForCausalLM.from_pretrained(sys.argv[1]).eval()\n'
            'with torch.no_grad():\n'
            '  logits = model(torch.tensor(np.load(sys.argv[2]))).logits.numpy()\n'
            'np.save(sys.argv[3], logits)\n')
  run_tool(['-c', script, folder, str(tmp_path / 'tokens.npy'), str(tmp_path / 'logits.npy')],
           timeout=300)
  ours = model.model.apply({'params': model.params}, jnp.asarray(tokens))
  np.testing.assert_allclose(np.asarray(ours), np.load(tmp_path / 'logits.npy'), atol=1e-4)


def test_clear_errors(parts, tmp_path):
  model = a_model(parts)
  (tmp_path / 'full').mkdir()
  (tmp_path / 'full' / 'notes.txt').write_text('keep me')
  with pytest.raises(PretrainedError, match='exists and is not empty'):
    export_model(model, str(tmp_path / 'full'))
  with pytest.raises(PretrainedError, match='is the model folder itself'):
    export_model(model, model.model_dir)
  without_tokenizer = Pretrained(model.model, model.params, model.vocab, model.cm3, None,
                                 model.model_dir)
  with pytest.raises(PretrainedError, match='names no image tokenizer'):
    export_model(without_tokenizer, str(tmp_path / 'a'))
  folder = export_model(model, str(tmp_path / 'b'))
  os.remove(os.path.join(folder, 'model.safetensors'))
  with pytest.raises(PretrainedError, match='exported model without its weights'):
    Pretrained.load(folder)
  spec_path = os.path.join(folder, 'model.json')
  with open(spec_path) as f:
    spec = json.load(f)
  spec['weights']['format'] = 'gguf'
  with open(spec_path, 'w') as f:
    json.dump(spec, f)
  with pytest.raises(PretrainedError, match="format 'gguf'"):
    Pretrained.load(folder)


def test_loading_onto_a_mesh_shards_the_weights_and_decodes_the_same_tokens(parts, tmp_path):
  from cm3leon_jax import partitioning  # pylint: disable=g-import-not-at-top
  model = a_model(parts, 'chameleon')
  folder = export_model(model, str(tmp_path / 'exported'))
  mesh = partitioning.make_mesh(partitioning.MeshConfig(data=1, fsdp=4, tensor=2))
  sharded = Pretrained.load(folder, mesh=mesh)
  embedding = sharded.params['embed']['token']  # [vocab, embed]
  assert embedding.sharding.mesh.shape == mesh.shape
  # Split over devices: each holds a quarter of the embedding width and half the vocabulary.
  assert embedding.addressable_shards[0].data.shape == (embedding.shape[0] // 2,
                                                        embedding.shape[1] // 4)
  greedy = DecodingConfig(temperature=0.0, num_decodes=1, seed=0, guidance_scale=3.0)
  prompts = ['a large red circle', 'a small blue square']
  _, ids = generation.text_to_image(sharded, prompts, greedy)
  _, expected = generation.text_to_image(Pretrained.load(folder), prompts, greedy)
  np.testing.assert_array_equal(ids, expected)
