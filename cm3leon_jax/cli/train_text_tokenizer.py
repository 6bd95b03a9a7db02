r"""Train a SentencePiece text vocabulary on a caption source.

  python tools/train_text_tokenizer.py --output=/tmp/captions.model            # synthetic captions
  python tools/train_text_tokenizer.py --captions_file=captions.txt --vocab_size=32000 --output=...

The model reserves seqio's ids: pad 0, eos 1, unk 2 (no bos), so it plugs into
``seqio.SentencePieceVocabulary`` and ``cm3leon_jax.tokenizers.multimodal.MultimodalVocabulary`` directly.
"""

import os
import tempfile

from absl import app, flags, logging
import sentencepiece as spm

from cm3leon_jax import cli
from cm3leon_jax.data.synthetic import SyntheticConfig, SyntheticDataset

_OUTPUT = flags.DEFINE_string('output', None, 'Path of the .model file to write.', required=True)
_CAPTIONS_FILE = flags.DEFINE_string('captions_file', None,
                                     'One caption per line; default: the synthetic dataset.')
_NUM_EXAMPLES = flags.DEFINE_integer('num_examples', 5000, 'Synthetic captions to train on.')
_VOCAB_SIZE = flags.DEFINE_integer('vocab_size', 128, 'Pieces in the vocabulary.')
_MODEL_TYPE = flags.DEFINE_enum('model_type', 'bpe', ['bpe', 'unigram'], 'SentencePiece model.')


def synthetic_captions(count: int):
  """The captions of the first `count` synthetic examples."""
  return [e.caption for e in SyntheticDataset(SyntheticConfig()).examples(0, count)]


def train(captions, output: str, vocab_size: int, model_type: str = 'bpe') -> str:
  """Train SentencePiece on `captions`; returns the written .model path."""
  captions = [c.strip() for c in captions if c.strip()]
  if not captions:
    raise ValueError('No non-empty caption to train the text tokenizer on.')
  prefix = output[:-len('.model')] if output.endswith('.model') else output
  os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
  with tempfile.NamedTemporaryFile('w', suffix='.txt', delete=False) as f:
    f.write('\n'.join(captions))
  try:
    spm.SentencePieceTrainer.train(
        input=f.name, model_prefix=prefix, vocab_size=vocab_size, model_type=model_type,
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, character_coverage=1.0,
        hard_vocab_limit=False, minloglevel=2)
  finally:
    os.remove(f.name)
  return prefix + '.model'


def main(argv):
  del argv
  if _CAPTIONS_FILE.value:
    with open(_CAPTIONS_FILE.value, encoding='utf-8') as f:
      captions = f.read().splitlines()
  else:
    captions = synthetic_captions(_NUM_EXAMPLES.value)
  path = train(captions, _OUTPUT.value, _VOCAB_SIZE.value, _MODEL_TYPE.value)
  logging.info('Wrote %s (%d captions).', path, len(captions))
  print(path)


def run():
  """Entry point of tools/train_text_tokenizer.py and `cm3leon-train-text-tokenizer`."""
  cli.run_app(main, __doc__)


if __name__ == '__main__':
  run()
