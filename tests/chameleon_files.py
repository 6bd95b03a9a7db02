"""Tiny files in Chameleon's real formats, written by the tests: a tokenizer.json laid out as
Chameleon's (special tokens first, image tokens named IMGIMG...Z, then a byte-level BPE)."""

import json
import os

import numpy as np
import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

from cm3leon_jax.tokenizers.chameleon import image_token_name

# Chameleon's leading ids: <s> at 0 (seqio's pad id), <pad>, </s>, and its end-of-turn token.
LEADING = ('<s>', '<pad>', '</s>', '<reserved08706>')
# The id transformers' processor fills with an image's tokens, in Meta's and transformers' files.
META_PLACEHOLDER, TRANSFORMERS_PLACEHOLDER = '<reserved08707>', '<image>'
# After the image tokens, as in Chameleon's file: <eoss> then <racm3:break>, sentinels, reserved.
TRAILING = ('<eoss>', '<racm3:break>', '<sentinel:0>', '<sentinel:1>', '<sentinel:2>',
            META_PLACEHOLDER)
CORPUS = ('a red circle left of a small blue square', 'the quick brown fox jumps over 12 lazy '
          'dogs', 'café, naïve, 東京 and 🙂 emoji', 'tabs\tand  double  spaces\nnew lines')


def _bpe(vocab_size: int) -> dict:
  """A byte-level BPE trained on CORPUS, as the dict of its tokenizer.json."""
  tokenizer = tokenizers.Tokenizer(models.BPE())
  tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tokenizer.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tokenizer.train_from_iterator(CORPUS * 20, trainer)
  return json.loads(tokenizer.to_str())


def write_tokenizer(path: str, num_image_codes: int = 16, seed: int = 0, vocab_size: int = 400,
                    drop_code=None, image_placeholder: str = META_PLACEHOLDER) -> dict:
  """Write a Chameleon-layout tokenizer.json; returns its token -> id map.

  Image codes get the ids after LEADING in a shuffled order (code c is not id 4 + c), so code
  and id only agree through the names. `drop_code` leaves one code without a token.
  `image_placeholder` names the id of transformers' image placeholder: Meta's files call it
  <reserved08707>, transformers' release '<image>'.
  """
  document = _bpe(vocab_size)
  order = np.random.default_rng(seed).permutation(num_image_codes)
  names = {name: i for i, name in enumerate(LEADING)}
  names.update({image_token_name(code): len(LEADING) + slot for slot, code in enumerate(order)
                if code != drop_code})
  first_trailing = len(LEADING) + num_image_codes
  trailing = tuple(image_placeholder if name == META_PLACEHOLDER else name for name in TRAILING)
  names.update({name: first_trailing + i for i, name in enumerate(trailing)})
  offset = first_trailing + len(TRAILING)
  names.update({piece: offset + i for piece, i in document['model']['vocab'].items()})
  document['model']['vocab'] = names
  # Chameleon's pre-tokenizer isolates sentinels and image names before the byte-level split.
  document['pre_tokenizer'] = {'type': 'Sequence', 'pretokenizers': [
      {'type': 'Split', 'pattern': {'Regex': '<sentinel:[0-9]+>'}, 'behavior': 'Isolated',
       'invert': False},
      {'type': 'Split', 'pattern': {'Regex': '(IMGIMG)((A|B|C|D|E|F|G|H|I|J){1,4})Z'},
       'behavior': 'Isolated', 'invert': False},
      {'type': 'Digits', 'individual_digits': True},
      {'type': 'ByteLevel', 'add_prefix_space': False, 'trim_offsets': True, 'use_regex': True}]}
  document['added_tokens'] = [
      {'id': names[name], 'content': name, 'single_word': False, 'lstrip': False,
       'rstrip': False, 'normalized': False, 'special': True}
      for name in LEADING + trailing]
  with open(path, 'w', encoding='utf-8') as f:
    json.dump(document, f, ensure_ascii=False)
  return names


def write_meta_model(model_dir, state, heads: int, kv_heads: int, shards: int, layers: int,
                     norm_eps: float, rope_theta: float) -> None:
  """A transformers Chameleon state dict (torch tensors) written as Meta's release stores it:
  interleaved rotary rows, one QK-norm vector per shard, `shards` model-parallel files each
  holding a slice of every tensor (consolidated.pth when there is one), and params.json.

  The QK-norm rows of the heads a shard holds must be equal (Meta's files keep one vector).
  """
  import torch  # pylint: disable=g-import-not-at-top

  files = [{} for _ in range(shards)]

  def split(name, tensor, axis):
    for shard, part in zip(files, torch.chunk(tensor, shards, dim=axis)):
      shard[name] = part.clone()

  def replicate(name, tensor):
    for shard in files:
      shard[name] = tensor.clone()

  def interleaved(w, n):
    rows, cols = w.shape
    return w.reshape(n, 2, rows // n // 2, cols).transpose(1, 2).reshape(rows, cols)

  def norm_vectors(name, rows):
    for shard, group in zip(files, torch.chunk(rows, shards, dim=0)):
      assert torch.equal(group, group[:1].expand_as(group)), 'unequal QK-norm rows in a shard'
      shard[name] = group[0].reshape(2, -1).T.reshape(-1).clone()

  split('tok_embeddings.weight', state['model.embed_tokens.weight'], 1)
  replicate('norm.weight', state['model.norm.weight'])
  split('output.weight', state['lm_head.weight'], 0)
  for i in range(layers):
    hf, meta = f'model.layers.{i}.', f'layers.{i}.'
    split(meta + 'attention.wq.weight',
          interleaved(state[hf + 'self_attn.q_proj.weight'], heads), 0)
    split(meta + 'attention.wk.weight',
          interleaved(state[hf + 'self_attn.k_proj.weight'], kv_heads), 0)
    split(meta + 'attention.wv.weight', state[hf + 'self_attn.v_proj.weight'], 0)
    split(meta + 'attention.wo.weight', state[hf + 'self_attn.o_proj.weight'], 1)
    split(meta + 'feed_forward.w1.weight', state[hf + 'mlp.gate_proj.weight'], 0)
    split(meta + 'feed_forward.w2.weight', state[hf + 'mlp.down_proj.weight'], 1)
    split(meta + 'feed_forward.w3.weight', state[hf + 'mlp.up_proj.weight'], 0)
    replicate(meta + 'attention_norm.weight', state[hf + 'input_layernorm.weight'])
    replicate(meta + 'ffn_norm.weight', state[hf + 'post_attention_layernorm.weight'])
    for ours, theirs in (('q_norm', 'q_normalization'), ('k_norm', 'k_normalization')):
      for leaf in ('weight', 'bias'):
        norm_vectors(f'{meta}attention.{theirs}.{leaf}', state[f'{hf}self_attn.{ours}.{leaf}'])
  os.makedirs(model_dir, exist_ok=True)
  names = ['consolidated.pth'] if shards == 1 else [f'consolidated.{s:02d}.pth'
                                                     for s in range(shards)]
  for name, shard in zip(names, files):
    torch.save(shard, os.path.join(model_dir, name))
  params = {'dim': state['model.norm.weight'].shape[0], 'n_layers': layers, 'n_heads': heads,
            'n_kv_heads': kv_heads, 'norm_eps': norm_eps, 'rope_theta': rope_theta,
            'swin_norm': False, 'model_parallel_size': shards}
  with open(os.path.join(model_dir, 'params.json'), 'w', encoding='utf-8') as f:
    json.dump({'model': params} if shards > 1 else params, f)
