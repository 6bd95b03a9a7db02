"""VQA accuracy as the official VQA evaluation computes it (Antol et al. 2015; the VQAv2
``vqaEval.py`` of GT-Vision-Lab/VQA).

A predicted answer scores min(#humans who gave it / 3, 1), averaged over the ten leave-one-out
subsets of the ten human answers (each subset drops one human and counts matches among the other
nine). Before matching, the prediction is normalised: newlines and tabs to spaces, trimmed, then
punctuation processing and digit/article processing. The human answers get punctuation
processing only, and only when they are not all the same. Both normalisations follow the
official script, quirks included:
- punctuation: each mark of its list is deleted when it touches a space in the original text, or
  when the text holds a digit-comma-digit group anywhere; otherwise it becomes a space. A period
  not followed by a digit is deleted (the script's pattern meant "not between digits", but its
  look-behind is mistyped, so only the look-ahead applies), at most 32 of them (``re.UNICODE``
  passed as the count).
- digits and articles: lower-cased words, number words zero to ten (and 'none') as digits, the
  articles a, an, the dropped, and apostrophe-less contractions (dont, isnt, ...) restored.
Scores are reported over all questions and per answer type, in percent.
"""

import collections
import re
from typing import Dict, Mapping, Sequence

_CONTRACTIONS = {
    'aint': "ain't", 'arent': "aren't", 'cant': "can't", 'couldve': "could've",
    'couldnt': "couldn't", "couldn'tve": "couldn't've", "couldnt've": "couldn't've",
    'didnt': "didn't", 'doesnt': "doesn't", 'dont': "don't", 'hadnt': "hadn't",
    "hadnt've": "hadn't've", "hadn'tve": "hadn't've", 'hasnt': "hasn't", 'havent': "haven't",
    'hed': "he'd", "hed've": "he'd've", "he'dve": "he'd've", 'hes': "he's", 'howd': "how'd",
    'howll': "how'll", 'hows': "how's", "Id've": "I'd've", "I'dve": "I'd've", 'Im': "I'm",
    'Ive': "I've", 'isnt': "isn't", 'itd': "it'd", "itd've": "it'd've", "it'dve": "it'd've",
    'itll': "it'll", "let's": "let's", 'maam': "ma'am", 'mightnt': "mightn't",
    "mightnt've": "mightn't've", "mightn'tve": "mightn't've", 'mightve': "might've",
    'mustnt': "mustn't", 'mustve': "must've", 'neednt': "needn't", 'notve': "not've",
    'oclock': "o'clock", 'oughtnt': "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at", 'shant': "shan't", "shed've": "she'd've", "she'dve": "she'd've",
    "she's": "she's", 'shouldve': "should've", 'shouldnt': "shouldn't",
    "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", "somebody'd": 'somebodyd',
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    'somebodyll': "somebody'll", 'somebodys': "somebody's", 'someoned': "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", 'someonell': "someone'll",
    'someones': "someone's", 'somethingd': "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", 'somethingll': "something'll", 'thats': "that's",
    'thered': "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    'therere': "there're", 'theres': "there's", 'theyd': "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", 'theyll': "they'll", 'theyre': "they're", 'theyve': "they've",
    'twas': "'twas", 'wasnt': "wasn't", "wed've": "we'd've", "we'dve": "we'd've",
    'weve': "we've", 'werent': "weren't", 'whatll': "what'll", 'whatre': "what're",
    'whats': "what's", 'whatve': "what've", 'whens': "when's", 'whered': "where'd",
    'wheres': "where's", 'whereve': "where've", 'whod': "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", 'wholl': "who'll", 'whos': "who's", 'whove': "who've",
    'whyll': "why'll", 'whyre': "why're", 'whys': "why's", 'wont': "won't",
    'wouldve': "would've", 'wouldnt': "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", 'yall': "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    'youd': "you'd", "youd've": "you'd've", "you'dve": "you'd've", 'youll': "you'll",
    'youre': "you're", 'youve': "you've"}
_NUMBER_WORDS = {'none': '0', 'zero': '0', 'one': '1', 'two': '2', 'three': '3', 'four': '4',
                 'five': '5', 'six': '6', 'seven': '7', 'eight': '8', 'nine': '9', 'ten': '10'}
_ARTICLES = frozenset(['a', 'an', 'the'])
_PUNCTUATION = [';', '/', '[', ']', '"', '{', '}', '(', ')', '=', '+', '\\', '_', '-', '>', '<',
                '@', '`', ',', '?', '!']
_DIGIT_COMMA_DIGIT = re.compile(r'(\d)(,)(\d)')
_PERIOD = re.compile(r'(?!<=\d)(\.)(?!\d)')  # Sic: see the module docstring.
_MAX_PERIODS_REMOVED = 32  # The official script passes re.UNICODE (= 32) as `count`.


def process_punctuation(text: str) -> str:
  """The official script's punctuation processing (see the module docstring)."""
  out = text
  has_digit_comma = _DIGIT_COMMA_DIGIT.search(text) is not None
  for mark in _PUNCTUATION:
    if mark + ' ' in text or ' ' + mark in text or has_digit_comma:
      out = out.replace(mark, '')
    else:
      out = out.replace(mark, ' ')
  return _PERIOD.sub('', out, count=_MAX_PERIODS_REMOVED)


def process_digits_and_articles(text: str) -> str:
  """Lower case, number words to digits, articles dropped, contractions restored."""
  words = [_NUMBER_WORDS.get(word, word) for word in text.lower().split()]
  words = [word for word in words if word not in _ARTICLES]
  return ' '.join(_CONTRACTIONS.get(word, word) for word in words)


def normalise_prediction(answer: str) -> str:
  """A predicted answer as the official script compares it."""
  answer = answer.replace('\n', ' ').replace('\t', ' ').strip()
  return process_digits_and_articles(process_punctuation(answer))


def question_accuracy(prediction: str, human_answers: Sequence[str]) -> float:
  """The accuracy (0..1) of one prediction against the question's human answers (ten in VQAv2)."""
  if not human_answers:
    raise ValueError('A question needs human answers to be scored.')
  predicted = normalise_prediction(prediction)
  answers = list(human_answers)
  if len(set(answers)) > 1:
    answers = [process_punctuation(answer) for answer in answers]
  scores = []
  for left_out in range(len(answers)):
    matches = sum(answer == predicted for i, answer in enumerate(answers) if i != left_out)
    scores.append(min(1.0, matches / 3))
  return sum(scores) / len(scores)


def vqa_accuracy(predictions: Mapping[int, str], annotations: Mapping[int, Mapping]) -> Dict:
  """Overall and per-answer-type accuracy in percent.

  Args:
    predictions: question id -> predicted answer.
    annotations: question id -> a VQAv2 annotation ({'answers': [{'answer': ...}, ...],
      'answer_type': ...}); every predicted question must have one.

  Returns:
    {'overall': %, 'per_answer_type': {type: %}, 'per_question': {id: %}, 'count': n}.
  """
  missing = [q for q in predictions if q not in annotations]
  if missing:
    raise ValueError(f'{len(missing)} predicted questions have no annotation, e.g. {missing[0]}.')
  if not predictions:
    raise ValueError('No predictions to score.')
  per_question, by_type = {}, collections.defaultdict(list)
  for question, prediction in predictions.items():
    annotation = annotations[question]
    accuracy = question_accuracy(prediction, [a['answer'] for a in annotation['answers']])
    per_question[question] = 100 * accuracy
    by_type[annotation.get('answer_type', 'unknown')].append(100 * accuracy)
  overall = sum(per_question.values()) / len(per_question)
  return {'overall': overall,
          'per_answer_type': {t: sum(v) / len(v) for t, v in sorted(by_type.items())},
          'per_question': per_question, 'count': len(per_question)}
