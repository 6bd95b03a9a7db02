"""Tiny files in Chameleon's real formats, written by the tests: a tokenizer.json laid out as
Chameleon's (special tokens first, image tokens named IMGIMG...Z, then a byte-level BPE)."""

import json

import numpy as np
import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

from cm3leon_jax.tokenizers.chameleon import image_token_name

# Chameleon's leading ids: <s> at 0 (seqio's pad id), <pad>, </s>, and its end-of-turn token.
LEADING = ('<s>', '<pad>', '</s>', '<reserved08706>')
# After the image tokens, as in Chameleon's file: <eoss> then <racm3:break>, sentinels, reserved.
TRAILING = ('<eoss>', '<racm3:break>', '<sentinel:0>', '<sentinel:1>', '<sentinel:2>',
            '<reserved08707>')
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
                    drop_code=None) -> dict:
  """Write a Chameleon-layout tokenizer.json; returns its token -> id map.

  Image codes get the ids after LEADING in a shuffled order (code c is not id 4 + c), so code
  and id only agree through the names. `drop_code` leaves one code without a token.
  """
  document = _bpe(vocab_size)
  order = np.random.default_rng(seed).permutation(num_image_codes)
  names = {name: i for i, name in enumerate(LEADING)}
  names.update({image_token_name(code): len(LEADING) + slot for slot, code in enumerate(order)
                if code != drop_code})
  first_trailing = len(LEADING) + num_image_codes
  names.update({name: first_trailing + i for i, name in enumerate(TRAILING)})
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
      for name in LEADING + TRAILING]
  with open(path, 'w', encoding='utf-8') as f:
    json.dump(document, f, ensure_ascii=False)
  return names
