"""Greedy decoding of imported Chameleon weights against transformers' ``generate`` as the oracle.

transformers' ChameleonForConditionalGeneration sets the logits of the image tokens named in its
``vocabulary_map`` (names starting 'IMGIMG') to the lowest float in every forward pass. So the
comparison is made twice, honestly: with an empty vocabulary_map (nothing masked: our plain greedy
loop against theirs), and with a map naming a block of image ids (their masking against our
modality control with ``generate_images=False``).
"""

import numpy as np
import pytest
import torch
from transformers import ChameleonConfig, ChameleonForConditionalGeneration

from cm3leon_jax import decoding, interop
from cm3leon_jax.decoding import DecodingConfig
from cm3leon_jax.interop import hf_chameleon
from cm3leon_jax.models.decoder import Decoder
from cm3leon_jax.tokenizers.multimodal import MultimodalVocabulary

VOCAB_SIZE, NEW_TOKENS = 256, 16
PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [12, 13], [14, 15, 16, 17]]


class TextVocabulary:
  """100 text ids; with 4 specials and no sentinels, image codes take ids 104..255."""

  vocab_size, eos_id, unk_id = 100, 2, 3


VOCAB = MultimodalVocabulary(TextVocabulary(), num_image_codes=152, num_sentinels=0,
                             pad_to_multiple=1)


def hf_model(vocabulary_map) -> ChameleonForConditionalGeneration:
  """A tiny random Chameleon (grouped KV heads, QK-norm), norms away from 1."""
  config = ChameleonConfig(
      vocab_size=VOCAB_SIZE, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
      rms_norm_eps=1e-6, rope_parameters={'rope_type': 'default', 'rope_theta': 500.0},
      vq_config=hf_chameleon.PLACEHOLDER_VQ_CONFIG, vocabulary_map=vocabulary_map,
      attn_implementation='eager')
  torch.manual_seed(0)
  model = ChameleonForConditionalGeneration(config).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if 'vqmodel' not in name:
        p.normal_(1.0 if 'norm.weight' in name else 0.0, 0.3 if 'norm' in name else 0.1)
  return model


def hf_greedy(model, prompt):
  """transformers' greedy continuation of one prompt (it stops after its eos, id 2)."""
  with torch.no_grad():
    out = model.generate(torch.tensor([prompt]), max_new_tokens=NEW_TOKENS, do_sample=False)
  return out[0, len(prompt):].tolist()


def ours(tmp_path, model, config, vocab=None):
  """Our greedy continuations of all PROMPTS in one padded batch, each cut after its stop."""
  model.save_pretrained(tmp_path)
  decoder_config, params = interop.load_chameleon(str(tmp_path), dtype='float32')
  samples = decoding.generate(Decoder(decoder_config), params, PROMPTS, config, vocab)
  return [row[0, :n[0]].tolist() for row, n in zip(samples.tokens, samples.num_tokens)]


GREEDY = DecodingConfig(max_new_tokens=NEW_TOKENS, temperature=0, stop_ids=(2,))


def test_greedy_text_equals_transformers_generate(tmp_path):
  model = hf_model(vocabulary_map={})
  assert model.model.vocabulary_mapping.image_tokens == []  # Their forward masks nothing.
  expected = [hf_greedy(model, p) for p in PROMPTS]
  assert ours(tmp_path, model, GREEDY) == expected
  assert all(len(e) > 1 for e in expected) and len({tuple(e) for e in expected}) == 3


def test_text_only_modality_control_equals_transformers_image_masking(tmp_path):
  image_ids = range(VOCAB.first_image_id, VOCAB_SIZE)
  model = hf_model(vocabulary_map={f'IMGIMG{i}Z': i for i in image_ids})
  assert model.model.vocabulary_mapping.image_tokens == list(image_ids)
  expected = [hf_greedy(model, p) for p in PROMPTS]
  text_only = DecodingConfig(max_new_tokens=NEW_TOKENS, temperature=0, stop_ids=(2,),
                             tokens_per_image=4, generate_images=False)
  assert ours(tmp_path / 'text', model, text_only, VOCAB) == expected
  # Without the constraint our greedy picks image ids: the masking is what made them agree.
  unconstrained = ours(tmp_path / 'free', model, GREEDY)
  assert any(np.isin(row, image_ids).any() for row in unconstrained)


@pytest.mark.parametrize('changes, message', [
    (dict(max_new_tokens=60), "max_length=64"),
    (dict(guidance_scale=float('nan')), 'guidance_scale'),
])
def test_bad_settings_with_imported_weights(tmp_path, changes, message):
  model = hf_model(vocabulary_map={})
  with pytest.raises(decoding.DecodingError, match=message):
    ours(tmp_path, model, DecodingConfig(**{'temperature': 0, **changes}), VOCAB)
