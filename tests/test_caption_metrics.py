"""Caption and VQA metrics against the evaluations the field reports: CIDEr-D against
pycocoevalcap's Cider, the PTB tokenization against Stanford's PTBTokenizer (the jar that
pycocoevalcap ships, run on Java), and VQA accuracy against the official script's rules, each
case's value worked out below from those rules."""

import pytest

from cm3leon_jax.evaluation import cider, ptb_tokenizer, vqa_accuracy

RAW_CAPTIONS = [
    'A man riding a wave on top of a surfboard.',
    'Two dogs playing with a frisbee in the park!',
    "A woman's purse and a man's hat on the table",
    "The cat doesn't like the dog; it's scared.",
    '"Stop" sign at an intersection (near a school).',
    "A black-and-white photo of a 1950's car.",
    'A train costs $5.50, about 1,000 yen... really?',
    'People at the U.S. Open -- tennis match.',
    "Kids' toys: blocks, trains & cars.",
    'A plate with pizza/pasta and a glass of wine',
    "Isn't that a cat?I can't tell.",
    'A street sign reads "Main St." at night.',
    'An  old   man   with extra   spaces  .',
    "It was 50% off at Mr. Smith's store!!",
    "Someone said 'hello' to the dog",
    'A couple of giraffes standing next to each other ...',
    'Ceci est un café à Paris.',
    'The clock reads 10:30 p.m. on the tower.',
    "A man's bike isn't there, they'd say we'll go.",
    'A red double-decker bus #12 @ the stop',
    "They're gonna eat cannot wanna",
    'The dog’s bone isn’t “fresh” anymore.',
    'Etc. and so on etc.',
    'A sign for the U.S.',
    'He said: "Go!" and left.',
    'A woman holding an umbrella in the rain .',
    'a bowl of fruit , bananas and apples',
    'A man with a t-shirt that says "I <3 NY".',
    'Its a bird!Its a plane!',
    'Three zebras grazing in a field.Two giraffes too.',
    "The train's 3:00pm departure was delayed...",
    "Dr. Who's police box at 5 a.m.",
    'A cake with "Happy 30th" on it',
    'A toilet with its lid up; a sink nearby',
    "There is a 'no parking' sign",
    'Two people ride bikes in N.Y. City.',
    "This is a sandwich's half",
    "'Tis the season, ya'll.",
    "A photo from the '80s.",
    'A cow in the field , looking at the camera.',
    'A boy  is playing  baseball',
    'A close-up of a hot dog w/ mustard & ketchup.',
    'A group of people standing around a table with laptops on it.',
    'Man in a red shirt (and blue hat) holding a kite!',
    '"The quick brown fox" jumps over the lazy dog.',
    'A bathroom with a toilet, sink, and mirror.',
    "There's a cat on the car's hood.",
    'An airplane flying over the city at 30,000 ft.',
    'A 2-year-old boy eats a slice of pizza.',
    'Vases of flowers sit on a window-sill',
    "A bus that says 'Out of Service' on its sign",
    'Two teddy bears, one brown & one white.',
    'A laptop, a mouse and a cup of coffee on a desk.',
    'a giraffe eating leaves from a tall tree',
    'The kitchen is clean and ready for cooking...',
    'This photo was taken @ the beach :)',
    "A man's hand holding a Nintendo Wii remote control.",
    'a computer monitor sitting on top of a wooden desk.',
    'A yellow fire hydrant on a sidewalk next to the street',
    'A sign that reads: "No U-turn"',
    'A brown & white dog; sleeping on a couch.',
    "I'm not sure what this is, but it's big.",
    "You'd think they'd've known.",
    'A 3.5 inch floppy disk & a CD-ROM.',
    'A black cat sitting in a bathroom sink?',
    'The hands of the clock read 12:45.',
    "Surfers ride the waves at Hawai'i.",
    'A group of 5 men, 3 women.',
    'The U.N. building in NYC.',
    'Motorcycles parked along the side of the road.',
    'A bowl w/ some cereal',
]


def test_python_tokenization_equals_stanford_ptb_on_raw_captions():
  from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer  # pylint: disable=g-import-not-at-top
  want = PTBTokenizer().tokenize({i: [{'caption': c}] for i, c in enumerate(RAW_CAPTIONS)})
  got = ptb_tokenizer.tokenize(RAW_CAPTIONS, backend='python')
  mismatches = [(raw, mine, want[i][0]) for i, (raw, mine) in enumerate(zip(RAW_CAPTIONS, got))
                if mine != want[i][0]]
  assert not mismatches, '\n'.join(f'{r!r}\n  ours: {m}\n  PTB:  {w}' for r, m, w in mismatches)
  # The set exercises what punctuation removal would not hide.
  assert "does n't" in got[3] and '-lrb-' in got[4] and '1,000' in got[6] and 'u.s.' in got[7]


def test_java_backend_equals_pycocoevalcap_tokenizer():
  from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer  # pylint: disable=g-import-not-at-top
  want = PTBTokenizer().tokenize({i: [{'caption': c}] for i, c in enumerate(RAW_CAPTIONS)})
  assert ptb_tokenizer.backend_in_use('auto') == 'java'
  assert ptb_tokenizer.tokenize(RAW_CAPTIONS, backend='java') == [
      want[i][0] for i in range(len(RAW_CAPTIONS))]


def test_java_backend_without_java_says_what_is_missing(monkeypatch):
  monkeypatch.setattr(ptb_tokenizer.shutil, 'which', lambda name: None)
  with pytest.raises(FileNotFoundError, match='needs `java` on \\$PATH'):
    ptb_tokenizer.tokenize(['a cat'], backend='java')
  assert ptb_tokenizer.backend_in_use('auto') == 'python'
  assert ptb_tokenizer.tokenize(['A cat, sleeping.'], backend='auto') == ['a cat sleeping']


REFERENCES = {
    1: ['a man riding a wave on top of a surfboard', 'a surfer riding a large wave',
        'a person on a surfboard in the ocean', 'man surfing on a wave',
        'a surfer is riding the big wave'],
    2: ['two dogs playing with a frisbee in the park', 'dogs chase a frisbee on the grass',
        'two dogs running on a field', 'a pair of dogs playing outside'],
    3: ['a plate of food with broccoli and rice', 'rice and broccoli on a white plate',
        'a healthy meal on a plate', 'food on a plate with a fork', 'a dinner plate of vegetables',
        'broccoli next to rice'],
    4: ['a red bus driving down the street', 'a double decker bus on a city road',
        'a bus on the street'],
    5: ['a cat sleeping on a couch', 'a cat lying on a sofa', 'the cat is asleep on the couch'],
    6: ['a clock tower in a city', 'a tall tower with a clock'],
}
CANDIDATES = {
    1: 'a man riding a wave on top of a surfboard',  # One reference exactly.
    2: 'two dogs playing with a frisbee',  # A shorter prefix: the length penalty.
    3: 'a plate with rice and broccoli and a fork and a knife on a table',  # Longer.
    4: 'a cat sleeping on a couch',  # Another image's reference: a low score.
    5: 'cat cat cat cat cat',  # Repetition: clipping.
    6: '',  # Empty.
}


def test_cider_d_equals_pycocoevalcap():
  from pycocoevalcap.cider.cider import Cider  # pylint: disable=g-import-not-at-top
  want_corpus, want_scores = Cider().compute_score(REFERENCES, {k: [v] for k, v in
                                                                CANDIDATES.items()})
  got_corpus, got_scores = cider.cider_d(REFERENCES, CANDIDATES)
  assert got_corpus == pytest.approx(want_corpus, rel=1e-9)
  for i, image in enumerate(REFERENCES):
    assert got_scores[image] == pytest.approx(want_scores[i], rel=1e-9, abs=1e-12)
  # The scores span a real range, so agreement is not that of zeros.
  assert max(got_scores.values()) > 1.0 and min(got_scores.values()) == 0.0


def test_cider_d_refuses_mismatched_images():
  with pytest.raises(ValueError, match='1 without a candidate'):
    cider.cider_d({1: ['a cat'], 2: ['a dog']}, {1: 'a cat'})
  with pytest.raises(ValueError, match='no reference captions'):
    cider.cider_d({1: []}, {1: 'a cat'})


def _humans(*groups):
  """Ten human answers from (answer, count) pairs."""
  answers = [answer for answer, count in groups for _ in range(count)]
  assert len(answers) == 10
  return answers


# (prediction, human answers, expected accuracy, the rule that decides it). Each expected value:
# LOO = the ten leave-one-out subsets, each scoring min(1, matches among the other nine / 3).
VQA_CASES = [
    # 'Two' -> '2' (number word, lower case); humans' answers get no digit processing, so only
    # the three '2' match. LOO: 3 subsets lose a '2' -> 2/3; 7 keep all three -> 1. (2 + 7) / 10.
    ('Two', _humans(('2', 3), ('two', 7)), 0.9, 'number word'),
    # '1,000' holds a digit-comma-digit group, so every listed mark is deleted: '1000'. The humans
    # differ, so theirs are processed too: '1,000' -> '1000', three matches. (2 + 7) / 10.
    ('1,000', _humans(('1000', 2), ('1,000', 1), ('many', 7)), 0.9, 'digit comma'),
    # Humans all alike are left unprocessed: '1,000' never equals the prediction's '1000'.
    ('1,000', _humans(('1,000', 10)), 0.0, 'identical humans unprocessed'),
    # 'The two dogs.' -> period deleted (no digit after it), 'the' dropped, 'two' -> '2':
    # '2 dogs'; one human matches. LOO: 1 subset -> 0; 9 subsets -> 1/3. 9 * (1/3) / 10.
    ('The two dogs.', _humans(('2 dogs', 1), ('two dogs', 9)), 0.3, 'article, period, number'),
    # 'isnt' -> "isn't" (contraction); two humans match. LOO: 2 -> 1/3; 8 -> 2/3. 18/3 / 10.
    ('isnt', _humans(("isn't", 2), ('no', 8)), 0.6, 'contraction'),
    # A period followed by a digit stays: '3.5'. (2 + 7) / 10.
    ('3.5', _humans(('3.5', 3), ('3', 7)), 0.9, 'period before a digit'),
    # '-' touches a space somewhere ('t-shirt -'), so every '-' is deleted: 'tshirt'.
    ('t-shirt -', _humans(('tshirt', 3), ('t shirt', 7)), 0.9, 'mark touching a space'),
    # No space around it: '-' becomes a space, 't shirt'; seven match: every subset has >= 3.
    ('t-shirt', _humans(('tshirt', 3), ('t shirt', 7)), 1.0, 'mark inside a word'),
    # Tabs, newlines and outer spaces go first: ' yes\n' -> 'yes'. Four match: LOO 4 -> 1 (3
    # left), 6 -> 1. All ten subsets score 1.
    (' yes\n', _humans(('yes', 4), ('no', 6)), 1.0, 'whitespace'),
    # One match: LOO 1 -> 0, 9 -> 1/3: 0.3.
    ('yes', _humans(('yes', 1), ('no', 9)), 0.3, 'a single human agrees'),
]


@pytest.mark.parametrize('prediction,humans,expected,rule', VQA_CASES,
                         ids=[case[3] for case in VQA_CASES])
def test_vqa_accuracy_follows_the_official_rules(prediction, humans, expected, rule):
  del rule
  assert vqa_accuracy.question_accuracy(prediction, humans) == pytest.approx(expected, abs=1e-12)


def test_vqa_accuracy_averages_per_answer_type():
  annotations = {
      1: {'answers': [{'answer': a} for a in _humans(('2', 3), ('two', 7))],
          'answer_type': 'number'},
      2: {'answers': [{'answer': a} for a in _humans(('yes', 1), ('no', 9))],
          'answer_type': 'yes/no'},
      3: {'answers': [{'answer': a} for a in _humans(('no', 10))], 'answer_type': 'yes/no'},
  }
  result = vqa_accuracy.vqa_accuracy({1: 'two', 2: 'yes', 3: 'No'}, annotations)
  assert result['per_question'] == pytest.approx({1: 90.0, 2: 30.0, 3: 100.0})
  assert result['overall'] == pytest.approx(220 / 3)
  assert result['per_answer_type'] == pytest.approx({'number': 90.0, 'yes/no': 65.0})
  with pytest.raises(ValueError, match='no annotation'):
    vqa_accuracy.vqa_accuracy({4: 'yes'}, annotations)
