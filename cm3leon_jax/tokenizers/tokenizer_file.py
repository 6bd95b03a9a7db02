"""The multimodal vocabulary as one `tokenizers` file (``tokenizer.json``), the form Chameleon
checkpoints ship their vocabulary in and transformers reads.

Every id keeps its meaning: the text vocabulary's own pieces (a SentencePiece model converted by
``sentencepiece_json``, or the `tokenizers` file it came from), then our special tokens by name
(``<break>``, ``<infill>``, ``<eoss>``, ``<mask>``, ``<sentinel:i>``), then each image code under
Chameleon's name for it (code 907 -> ``IMGIMGJAHZ``) at our id for it, then ``<unused:N>`` up
to the vocabulary size. transformers finds image tokens by those names (its
``vocabulary_map``), so it masks and maps exactly our image ids.
"""

from typing import Dict

import seqio
import tokenizers

from cm3leon_jax.tokenizers.chameleon import image_token_name
from cm3leon_jax.tokenizers.multimodal import MultimodalVocabulary
from cm3leon_jax.tokenizers.sentencepiece_json import tokenizer_from_sentencepiece


class TokenizerFileError(ValueError):
  """A vocabulary that cannot be written as one tokenizer file; the message says why."""


def text_tokenizer(text_vocabulary: seqio.Vocabulary) -> tokenizers.Tokenizer:
  """A Tokenizer encoding text as `text_vocabulary` does (SentencePiece or a tokenizers file)."""
  model_file = getattr(text_vocabulary, 'sentencepiece_model_file', None)
  if model_file:
    return tokenizer_from_sentencepiece(model_file)
  path = getattr(text_vocabulary, 'path', None)
  if path and path.endswith('.json'):
    return tokenizers.Tokenizer.from_file(path)
  raise TokenizerFileError(f'Cannot write the text vocabulary {text_vocabulary!r} as a tokenizer '
                           'file: it is neither SentencePiece nor a tokenizers file.')


def multimodal_tokenizer(vocab: MultimodalVocabulary) -> tokenizers.Tokenizer:
  """A Tokenizer whose ids are `vocab`'s: text as the text vocabulary encodes it, our special
  tokens, Chameleon's image token names, unused ids (see module docstring)."""
  tokenizer = text_tokenizer(vocab.text_vocabulary)
  size = tokenizer.get_vocab_size(with_added_tokens=True)
  if size != vocab.num_text:
    raise TokenizerFileError(f'The text tokenizer has {size} ids but the vocabulary counts '
                             f'{vocab.num_text} text ids.')
  names = list(vocab.special_names)
  names += [image_token_name(code) for code in range(vocab.num_image_codes)]
  names += [f'<unused:{i}>' for i in range(vocab.num_text + len(names), vocab.vocab_size)]
  tokenizer.add_special_tokens([tokenizers.AddedToken(name, special=True, normalized=False)
                                for name in names])
  wrong = [(name, tokenizer.token_to_id(name), vocab.num_text + i)
           for i, name in enumerate(names) if tokenizer.token_to_id(name) != vocab.num_text + i]
  if wrong:  # A text piece spelled like one of our names would take its id.
    name, got, want = wrong[0]
    raise TokenizerFileError(f'{len(wrong)} special or image names would not get their ids '
                             f'(first: {name!r} at {got}, not {want}).')
  return tokenizer


def vocabulary_map(tokenizer: tokenizers.Tokenizer) -> Dict[str, int]:
  """Every token name and its id (a Chameleon config.json's ``vocabulary_map``)."""
  return dict(sorted(tokenizer.get_vocab(with_added_tokens=True).items(), key=lambda kv: kv[1]))
