"""Caption tokenization as the COCO caption evaluation does it: Stanford's PTBTokenizer
(CoreNLP 3.4.1, ``-preserveLines -lowerCase``), then the punctuation tokens dropped.

Two backends give the same tokens:
- 'java' runs that PTBTokenizer: the jar that pycocoevalcap ships (``pip install pycocoevalcap``)
  or one given by path, on the `java` of $PATH. This is what published CIDEr scores used.
- 'python' is this module's equivalent, for machines without Java: a lexer for the PTB rules that
  captions meet (lower case; quotes as `` '' ` '; contractions split as do n't, ca n't, it 's,
  kids '; cannot/gonna/wanna/gotta split; brackets as -lrb- -rrb-, which the evaluation keeps
  because its punctuation list is upper case; numbers such as 1,000 5.50 10:30 kept whole;
  abbreviations such as u.s. p.m. mr. st. kept with their period; $ % # @ & < > and a trailing
  slash (w/) as tokens; the emoticons :) :( as :-rrb- :-lrb-; words run together across . ! ?
  without a space stay one token, as PTB leaves them). The tests check it against the jar on 71
  captions that exercise each rule; rarer constructions may still tokenize differently.
'auto' takes Java when both `java` and the jar are found.
"""

import functools
import importlib.util
import os
import re
import shutil
import subprocess
import tempfile
from typing import List, Optional, Sequence

# The tokens the COCO caption evaluation removes after PTB tokenization (its exact list).
PUNCTUATION = frozenset(["''", "'", '``', '`', '-LRB-', '-RRB-', '-LCB-', '-RCB-', '.', '?', '!',
                         ',', ':', '-', '--', '...', ';'])
JAR_NAME = 'stanford-corenlp-3.4.1.jar'

_ABBREVIATIONS = frozenset(
    'mr mrs ms dr st jr sr prof etc vs mt inc co corp ltd ft ave gen gov sen rep rev no jan feb '
    'mar apr aug sep sept oct nov dec'.split())
_SPLIT_WORDS = {'cannot': ['can', 'not'], 'gonna': ['gon', 'na'], 'wanna': ['wan', 'na'],
                'gotta': ['got', 'ta'], 'gimme': ['gim', 'me'], 'lemme': ['lem', 'me'],
                "'tis": ["'t", 'is'], "'twas": ["'t", 'was']}
_BRACKETS = {'(': '-lrb-', ')': '-rrb-', '[': '-lsb-', ']': '-rsb-', '{': '-lcb-', '}': '-rcb-'}
_CLITICS = ("n't", "'s", "'re", "'ve", "'ll", "'d", "'m")
_NORMALISE = str.maketrans({'\u2019': "'", '\u2018': "'", '\u201c': '"', '\u201d': '"',
                            '\u201e': '"', '\u2026': '...'})

_WORD_CHARS = r'[^\s"\'()\[\]{},;:!?.$%#@<>=+*&/]'
_LEXER = re.compile('|'.join([
    r'(?P<space>\s+)',
    r'(?P<ellipsis>\.\.\.+)',
    r'(?P<dashes>--+)',
    r'(?P<quote>")',
    r'(?P<emoticon>[:;]-?[()])',
    r'(?P<bracket>[()\[\]{}])',
    r"(?P<decade>'\d\ds?\b)",
    r'(?P<number>(?>\d+(?:[.,:]\d+)*)(?:st|nd|rd|th)?(?![a-z0-9-]))',
    r'(?P<digits>(?>\d+(?:[.,:]\d+)*)(?=[a-z]))',  # Run into letters: 3:00pm -> 3:00 pm.
    # A word: inner hyphens, slashes and apostrophes, and ., ! or ? run into the next letters.
    rf"(?P<word>'?{_WORD_CHARS}+(?:[.!?'/]{_WORD_CHARS}+)*'?)",
    r'(?P<marks>[!?]+)',
    r'(?P<symbol>.)',
]), re.DOTALL)


def _split_clitics(word: str) -> List[str]:
  if word in _SPLIT_WORDS or word in _CLITICS:
    return list(_SPLIT_WORDS.get(word, [word]))
  if word.startswith("'") and len(word) > 1:
    return ['`'] + _split_clitics(word[1:])
  for clitic in _CLITICS:
    if word.endswith(clitic) and len(word) > len(clitic):
      return _split_clitics(word[:-len(clitic)]) + [clitic]
  if word.endswith("'") and len(word) > 1:
    return _split_clitics(word[:-1]) + ["'"]
  return [word]


def _is_abbreviation(word: str) -> bool:
  return word in _ABBREVIATIONS or re.fullmatch(r'(?:[a-z]\.)+[a-z]', word) is not None


def _quote(text: str, position: int) -> str:
  before = text[position - 1] if position else ' '
  return '``' if before.isspace() or before in '([{' else "''"


def _python_tokens(caption: str) -> List[str]:
  """PTB's tokens of one caption, lower-cased, punctuation still in."""
  text = caption.translate(_NORMALISE).lower()
  tokens: List[str] = []
  position = 0
  while position < len(text):
    match = _LEXER.match(text, position)
    kind, value, position = match.lastgroup, match.group(), match.end()
    if kind == 'word' and text.startswith('.', position) and _is_abbreviation(value):
      value, position = value + '.', position + 1  # The abbreviation keeps its period.
    if kind == 'space':
      continue
    elif kind == 'quote':
      tokens.append(_quote(text, match.start()))
    elif kind in ('ellipsis', 'dashes'):
      tokens.append(value[:3] if kind == 'ellipsis' else '--')
    elif kind in ('bracket', 'emoticon'):
      tokens.append(value[:-1] + _BRACKETS[value[-1]])
    elif kind == 'word':
      tokens.extend(_split_clitics(value))
    else:
      tokens.append(value)
  return tokens


def _drop_punctuation(tokens: Sequence[str]) -> str:
  return ' '.join(token for token in tokens if token not in PUNCTUATION)


@functools.lru_cache(maxsize=None)
def find_jar() -> Optional[str]:
  """The PTBTokenizer jar that pycocoevalcap ships, if that package is installed."""
  spec = importlib.util.find_spec('pycocoevalcap')
  if spec is None or not spec.submodule_search_locations:
    return None
  path = os.path.join(list(spec.submodule_search_locations)[0], 'tokenizer', JAR_NAME)
  return path if os.path.exists(path) else None


def _java_lines(captions: Sequence[str], jar: str) -> List[str]:
  with tempfile.NamedTemporaryFile('w', suffix='.txt', delete=False, encoding='utf-8') as f:
    f.write('\n'.join(caption.replace('\n', ' ') for caption in captions))
    path = f.name
  try:
    result = subprocess.run(
        ['java', '-cp', jar, 'edu.stanford.nlp.process.PTBTokenizer', '-preserveLines',
         '-lowerCase', path], capture_output=True, check=True)
  finally:
    os.remove(path)
  lines = result.stdout.decode('utf-8').split('\n')
  return (lines + [''] * len(captions))[:len(captions)]


def tokenize(captions: Sequence[str], backend: str = 'auto', jar: Optional[str] = None) -> List[str]:
  """Each caption as the COCO evaluation tokenizes it: space-joined lower-case PTB tokens without
  punctuation.

  Args:
    backend: 'java', 'python' or 'auto' (Java when `java` and the jar are found).
    jar: the PTBTokenizer jar for 'java' (default: pycocoevalcap's).

  Raises:
    FileNotFoundError: backend 'java' without `java` on $PATH or without the jar.
  """
  if backend not in ('auto', 'java', 'python'):
    raise ValueError(f"backend must be 'auto', 'java' or 'python', got {backend!r}.")
  jar = jar or find_jar()
  java = shutil.which('java')
  if backend == 'java' and not (java and jar):
    raise FileNotFoundError(
        f'PTB tokenization with Java needs `java` on $PATH (found: {java}) and {JAR_NAME} '
        f'(found: {jar}; `pip install pycocoevalcap` ships it). backend=python needs neither.')
  if backend == 'python' or not (java and jar):
    return [_drop_punctuation(_python_tokens(caption)) for caption in captions]
  return [_drop_punctuation(line.rstrip().split(' ')) for line in _java_lines(captions, jar)]


def backend_in_use(backend: str = 'auto') -> str:
  """The backend `tokenize(..., backend)` runs here: 'java' or 'python'."""
  if backend == 'auto':
    return 'java' if shutil.which('java') and find_jar() else 'python'
  return backend
