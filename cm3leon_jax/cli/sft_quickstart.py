r"""The fine-tuning stage of the main job: instruction tasks on the synthetic scenes, continuing
from the quickstart's workdir (run tools/quickstart.py first).

  python tools/sft_quickstart.py --workdir=/tmp/cm3leon_quickstart     (what `make sft-demo` runs)

Stages (each skipped when its output exists, so running again resumes):
  1. Beam preprocessing of each task's instruction documents, with the quickstart's tokenizers:
     edit, control:canny, control:segmentation, ground, caption, vqa  <workdir>/sft_data/sft_<task>
  2. fine-tuning the quickstart model on their balanced mixture (cm3leon_sft; thresholds 3 / 0.3)
     with gin/quickstart.gin's model and data settings                 <workdir>/sft_model/
  3. judging held-out scenes, the fine-tuned model against the pretrained one and against the
     baseline that follows no instruction: copying the input (editing), the caption alone without
     boxes (grounding), unconditional samples (control), the most frequent answer per question
     type (VQA); paired 95% intervals                                  <workdir>/sft_report.json
"""

import collections
import dataclasses
import json
import os
import subprocess
import sys
import time
from typing import Dict, List

from absl import flags, logging
import numpy as np

from cm3leon_jax import cli

_WORKDIR = flags.DEFINE_string('workdir', '/tmp/cm3leon_quickstart',
                               'The quickstart\'s workdir (its model and tokenizers).')
_TRAIN_DOCUMENTS = flags.DEFINE_integer('train_documents', 1000, 'Training documents per task.')
_VALIDATION_DOCUMENTS = flags.DEFINE_integer('validation_documents', 50,
                                             'Validation documents per task.')
_STEPS = flags.DEFINE_integer('steps', 300, 'Fine-tuning steps.')
_LEARNING_RATE = flags.DEFINE_float('learning_rate', 1e-3, 'Peak fine-tuning learning rate.')
_JUDGED = flags.DEFINE_integer('judged_examples', 64, 'Held-out scenes judged per task.')
_GIN_BINDINGS = flags.DEFINE_multi_string('gin_bindings', [], 'Extra bindings for fine-tuning.')
TASKS = ('edit', 'control:canny', 'control:segmentation', 'ground', 'caption', 'vqa')
_TASKS = flags.DEFINE_list('tasks', list(TASKS), 'The instruction tasks to fine-tune on and '
                           '(all but caption) to judge.')
HELD_OUT_SPLIT = 'test'
SEQUENCE_LENGTH = 256  # gin/quickstart.gin's TASK_FEATURE_LENGTHS.  # Synthetic scenes no split of either stage trains or validates on.


def _store_name(task: str) -> str:
  return 'sft_' + task.replace(':', '_')


def preprocess_tasks(workdir: str) -> str:
  """Each task's train and validation stores under <workdir>/sft_data; returns that folder."""
  from cm3leon_jax.data import preprocess, sft_preprocess, sft_sources  # pylint: disable=g-import-not-at-top
  data_dir = os.path.join(workdir, 'sft_data')
  text = os.path.join(workdir, 'data', 'text.model')
  image = os.path.join(workdir, 'image_tokenizer', 'tokenizer')
  for task in _TASKS.value:
    for split, count in (('train', _TRAIN_DOCUMENTS.value),
                         ('validation', _VALIDATION_DOCUMENTS.value)):
      split_dir = os.path.join(data_dir, _store_name(task), split)
      if not os.path.exists(os.path.join(split_dir, 'manifest.json')):
        config = preprocess.PreprocessConfig(split_dir, text, image, num_shards=2, batch_size=64,
                                             max_document_tokens=SEQUENCE_LENGTH)
        sft_preprocess.run(sft_sources.SyntheticInstructionSource(task, count, split), config)
  return data_dir


def fine_tune(workdir: str, data_dir: str) -> str:
  """Fine-tune <workdir>/model on the mixture into <workdir>/sft_model (resumes)."""
  model_dir = os.path.join(workdir, 'sft_model')
  bindings = [f"MODEL_DIR='{model_dir}'", "MIXTURE_OR_TASK_NAME='cm3leon_sft'",
              f'TRAIN_STEPS={_STEPS.value}',
              f"train.train.initial_checkpoint_path='{os.path.join(workdir, 'model')}'",
              f'optimizer.OptimizerConfig.peak_learning_rate={_LEARNING_RATE.value}',
              'optimizer.OptimizerConfig.warmup_steps=20', 'train.train.sample_images=0',
              f'train.train.checkpoint_every={_STEPS.value}'] + list(_GIN_BINDINGS.value)
  args = [sys.executable, '-m', 'cm3leon_jax.train', '--gin_file=quickstart.gin'] + [
      f'--gin.{b}' for b in bindings]
  logging.info('Running: %s', ' '.join(args))
  result = subprocess.run(args, env=dict(os.environ, CM3LEON_DATA_DIR=data_dir), check=False)
  if result.returncode:
    raise RuntimeError(f'Fine-tuning failed (exit {result.returncode}): {" ".join(args)}')
  return model_dir


def _greedy_images(config):
  """The task's guidance with greedy picks: the judged outcome of a prompt is then one image."""
  return dataclasses.replace(config, temperature=0.0, num_decodes=1)


def judge_edits(models: Dict, dataset, indices) -> Dict[str, np.ndarray]:
  """1/0 per held-out edit: the change made and the rest kept, for each model and the copy."""
  from cm3leon_jax.data import sft_synthetic  # pylint: disable=g-import-not-at-top
  from cm3leon_jax.decoding import instructions  # pylint: disable=g-import-not-at-top
  from cm3leon_jax.evaluation import instruction_judge  # pylint: disable=g-import-not-at-top
  edits = [e for e in (sft_synthetic.edit_example(dataset, i) for i in indices) if e]
  outcomes = {}
  for name, model in models.items():
    inputs = model.encode_images(np.stack([e.before.image for e in edits]))
    images, _ = instructions.edit_images(model, inputs, [e.instruction for e in edits],
                                         _greedy_images(instructions.EDIT_DECODING))
    outcomes[name] = np.array([instruction_judge.edit_judgement(image, e).passes
                               for image, e in zip(images[:, 0], edits)], np.float64)
  copies = models['fine_tuned'].decode_images(models['fine_tuned'].encode_images(
      np.stack([e.before.image for e in edits])))  # The input through the tokenizer.
  outcomes['baseline'] = np.array([instruction_judge.edit_judgement(c, e).passes
                                   for c, e in zip(copies, edits)], np.float64)
  return outcomes


def judge_grounding(models: Dict, dataset, indices) -> Dict[str, np.ndarray]:
  """1/0 per held-out scene: every shape inside its asked box (IoU > 0.5)."""
  from cm3leon_jax.data import sft_synthetic  # pylint: disable=g-import-not-at-top
  from cm3leon_jax.decoding import DecodingConfig, generation, instructions  # pylint: disable=g-import-not-at-top
  from cm3leon_jax.evaluation import instruction_judge  # pylint: disable=g-import-not-at-top
  scenes = [dataset[i] for i in indices]
  objects = [sft_synthetic.grounding_objects(s) for s in scenes]
  captions = [s.caption for s in scenes]
  config = DecodingConfig(temperature=0.0, guidance_scale=3.0)
  outcomes = {}
  for name, model in models.items():
    images, _ = instructions.grounded_images(model, captions, objects, config,
                                             dataset.config.resolution)
    outcomes[name] = _passes(images, objects, instruction_judge.grounding_passes)
  images, _ = generation.text_to_image(models['pretrained'], captions, config)
  outcomes['baseline'] = _passes(images, objects, instruction_judge.grounding_passes)
  return outcomes


def _passes(images, truths, rule) -> np.ndarray:
  return np.array([rule(image, truth) for image, truth in zip(images[:, 0], truths)], np.float64)


def judge_control(models: Dict, dataset, indices, kind: str) -> Dict[str, np.ndarray]:
  """1/0 per held-out scene: the sample's shapes cover the control's (IoU > 0.5)."""
  from cm3leon_jax.data import sft_synthetic  # pylint: disable=g-import-not-at-top
  from cm3leon_jax.decoding import DecodingConfig, generation, instructions  # pylint: disable=g-import-not-at-top
  from cm3leon_jax.evaluation import instruction_judge  # pylint: disable=g-import-not-at-top
  scenes = [dataset[i] for i in indices]
  agree = lambda image, scene: instruction_judge.control_agreement(image, scene) > \
      instruction_judge.MIN_IOU
  outcomes = {}
  for name, model in models.items():
    controls = model.encode_images(np.stack([sft_synthetic.control_image(s, kind) for s in scenes]))
    images, _ = instructions.controlled_images(
        model, controls, [s.caption for s in scenes], kind,
        _greedy_images(instructions.CONTROL_DECODING))
    outcomes[name] = _passes(images, scenes, agree)
  unconditional, _ = generation.unconditional_images(
      models['pretrained'], len(scenes), DecodingConfig(temperature=1.0, top_p=0.9, seed=0))
  outcomes['baseline'] = _passes(unconditional[:, None], scenes, agree)
  return outcomes


def judge_vqa(models: Dict, dataset, indices, train_indices) -> Dict[str, np.ndarray]:
  """The official VQA accuracy per held-out question; the baseline answers each question type
  with its most frequent training answer."""
  from cm3leon_jax.data import sft_synthetic  # pylint: disable=g-import-not-at-top
  from cm3leon_jax.decoding import DecodingConfig, instructions  # pylint: disable=g-import-not-at-top
  from cm3leon_jax.evaluation import instruction_judge  # pylint: disable=g-import-not-at-top
  questions = [sft_synthetic.question(dataset, i) for i in indices]
  outcomes = {}
  for name, model in models.items():
    ids = model.encode_images(np.stack([dataset[i].image for i in indices]))
    answers = instructions.vqa_answers(model, ids, [q for q, _, _ in questions],
                                       DecodingConfig(temperature=0.0), max_new_tokens=8)
    outcomes[name] = np.array([instruction_judge.vqa_score(a[0], truth)
                               for a, (_, truth, _) in zip(answers, questions)])
  frequent = most_frequent_answers(dataset, train_indices)
  outcomes['baseline'] = np.array([instruction_judge.vqa_score(frequent[kind], truth)
                                   for _, truth, kind in questions])
  return outcomes


def most_frequent_answers(dataset, indices) -> Dict[str, str]:
  """Each question type's most frequent answer over the given training scenes."""
  from cm3leon_jax.data import sft_synthetic  # pylint: disable=g-import-not-at-top
  counts = collections.defaultdict(collections.Counter)
  for index in indices:
    _, answer, kind = sft_synthetic.question(dataset, index)
    counts[kind][answer] += 1
  return {kind: counter.most_common(1)[0][0] for kind, counter in counts.items()}


def compare(outcomes: Dict[str, np.ndarray]) -> Dict:
  """Rates of each arm and the fine-tuned model's paired differences with 95% intervals."""
  from cm3leon_jax.evaluation import synthetic_eval  # pylint: disable=g-import-not-at-top
  fine_tuned = outcomes['fine_tuned']
  return {'examples': len(fine_tuned),
          'rates': {name: float(values.mean()) for name, values in outcomes.items()},
          'fine_tuned_minus_pretrained': synthetic_eval.paired_difference(
              fine_tuned, outcomes['pretrained']),
          'fine_tuned_minus_baseline': synthetic_eval.paired_difference(
              fine_tuned, outcomes['baseline'])}


def judge(workdir: str, model_dir: str) -> Dict:
  """Every judged task, pretrained against fine-tuned against its baseline."""
  from cm3leon_jax.data.sources import SYNTHETIC_SPLIT_OFFSETS  # pylint: disable=g-import-not-at-top
  from cm3leon_jax.data.synthetic import SyntheticConfig, SyntheticDataset  # pylint: disable=g-import-not-at-top
  from cm3leon_jax.decoding.pretrained import Pretrained  # pylint: disable=g-import-not-at-top
  models = {'pretrained': Pretrained.load(os.path.join(workdir, 'model')),
            'fine_tuned': Pretrained.load(model_dir)}
  dataset = SyntheticDataset(SyntheticConfig(
      resolution=models['pretrained'].image_tokenizer.config.resolution))
  start = SYNTHETIC_SPLIT_OFFSETS[HELD_OUT_SPLIT]
  held_out = list(range(start, start + _JUDGED.value))
  judges = {
      'edit': lambda: judge_edits(models, dataset, held_out),
      'ground': lambda: judge_grounding(models, dataset, held_out),
      'control:canny': lambda: judge_control(models, dataset, held_out, 'canny'),
      'control:segmentation': lambda: judge_control(models, dataset, held_out, 'segmentation'),
      'vqa': lambda: judge_vqa(models, dataset, held_out, range(_TRAIN_DOCUMENTS.value))}
  return {task: compare(judges[task]()) for task in _TASKS.value if task in judges}


def describe(tasks: Dict) -> List[str]:
  """One line per task: the three rates and the fine-tuned model's gains with intervals."""
  lines = []
  for task, result in tasks.items():
    rates = result['rates']
    gains = [f"{label} {result[key]['difference']:+.1%} [{result[key]['ci95_low']:+.1%}, "
             f"{result[key]['ci95_high']:+.1%}]" for label, key in (
                 ('vs pretrained', 'fine_tuned_minus_pretrained'),
                 ('vs baseline', 'fine_tuned_minus_baseline'))]
    lines.append(f"{task}: fine-tuned {rates['fine_tuned']:.1%}, pretrained "
                 f"{rates['pretrained']:.1%}, baseline {rates['baseline']:.1%} "
                 f"({result['examples']} held-out); " + '; '.join(gains))
  return lines


def main(argv):
  del argv
  start = time.perf_counter()
  cli.hide_gpus_from_tensorflow()
  workdir = os.path.abspath(_WORKDIR.value)
  if not os.path.exists(os.path.join(workdir, 'model', 'model.json')):
    raise SystemExit(f'{workdir} holds no quickstart model: run tools/quickstart.py '
                     f'--workdir={workdir} (make demo) first.')
  unknown = sorted(set(_TASKS.value) - set(TASKS))
  if unknown:
    raise SystemExit(f'--tasks: unknown {unknown}; choose among {", ".join(TASKS)}.')
  logging.info('Stage 1/3: instruction documents for %s', ', '.join(_TASKS.value))
  data_dir = preprocess_tasks(workdir)
  logging.info('Stage 2/3: fine-tuning %d steps', _STEPS.value)
  model_dir = fine_tune(workdir, data_dir)
  logging.info('Stage 3/3: judging %d held-out scenes per task', _JUDGED.value)
  tasks = judge(workdir, model_dir)
  report = {'model_dir': model_dir, 'steps': _STEPS.value, 'train_documents_per_task':
            _TRAIN_DOCUMENTS.value, 'wall_seconds': round(time.perf_counter() - start, 1),
            'tasks': tasks}
  path = os.path.join(workdir, 'sft_report.json')
  with open(path, 'w', encoding='utf-8') as f:
    json.dump(report, f, indent=2)
  print('\n'.join(describe(tasks)))
  print(path)


def run():
  """Entry point of tools/sft_quickstart.py and `cm3leon-sft-quickstart`."""
  cli.run_app(main, __doc__)


if __name__ == '__main__':
  run()
