r"""The main job on the embedded default: synthetic data -> tokenizers and a CLIP -> store ->
retrieval -> train -> report.

  python tools/quickstart.py --workdir=/tmp/cm3leon_quickstart        (what `make demo` runs)

Stages (each is skipped when its output already exists, so running again resumes):
  1. a 128-piece BPE text vocabulary on synthetic captions       <workdir>/data/text.model
  2. the tiny VQ-GAN image tokenizer (gin/vqgan/tiny.gin)         <workdir>/image_tokenizer/
  3. a small CLIP, the frozen retriever (tools/train_clip.py)     <workdir>/clip/
     and a second CLIP that only measures, trained with another seed on other examples
                                                                  <workdir>/measuring_clip/
  4. Beam preprocessing of the train and validation pairs         <workdir>/data/synthetic/
  5. Beam retrieval: the train split's index            <workdir>/data/synthetic/train/index
     and two neighbours per train and validation document        <workdir>/data/synthetic_retrieved/
  6. training with gin/quickstart.gin (resumes from checkpoints)  <workdir>/model/
  7. samples: held-out captions drawn with and without classifier-free guidance, held-out images
     captioned, all judged by the synthetic judge; FD-CLIP and CLIP score of the samples, of
     unconditional samples and of real images, at the same count  <workdir>/samples.png, .json
  8. the report: validation loss against the unigram baseline, the loss curve as a PNG, the
     judged samples, and <workdir>/report.json
"""

import json
import os
import shutil
import subprocess
import sys
import time

from absl import app, flags, logging

from cm3leon_jax import cli


_WORKDIR = flags.DEFINE_string('workdir', '/tmp/cm3leon_quickstart', 'Where everything goes.')
_TRAIN_DOCUMENTS = flags.DEFINE_integer('train_documents', 6000, 'Synthetic training pairs.')
_VALIDATION_DOCUMENTS = flags.DEFINE_integer('validation_documents', 500,
                                             'Synthetic validation pairs.')
_TOKENIZER_STEPS = flags.DEFINE_integer('tokenizer_steps', 1300, 'Image tokenizer training steps.')
_CLIP_STEPS = flags.DEFINE_integer('clip_steps', 300, 'CLIP training steps.')
_SEARCH_CANDIDATES = flags.DEFINE_integer(
    'search_candidates', 128, 'Candidates searched per document: synthetic documents are alike, '
    'so many score above the 0.9 near-copy threshold.')
_JUDGED_EXAMPLES = flags.DEFINE_integer(
    'judged_examples', 256, 'Held-out examples drawn from their captions, and captioned, for the '
    'report.')
_GUIDANCE_SCALE = flags.DEFINE_float('guidance_scale', 5.0, 'Classifier-free guidance scale of '
                                     'the report\'s samples.')
_FD_CLIP_SCALES = flags.DEFINE_multi_float(
    'fd_clip_guidance_scale', [1.5, 3.0], 'Further guidance scales whose samples are measured by '
    'FD-CLIP and CLIP score only (FD-CLIP is U-shaped in the scale).')
_GIN_BINDINGS = flags.DEFINE_multi_string('gin_bindings', [],
                                          'Extra bindings for the training run.')
_BASELINE_BATCHES = flags.DEFINE_integer('baseline_batches', 100,
                                         'Training batches counted for the unigram baseline.')


# Bumped when the stages change what they write: a workdir from another version is cleared of
# stage outputs (only those) rather than resumed into a mix of old and new.
VERSION = 4
_STAGE_OUTPUTS = ('data', 'image_tokenizer', 'clip', 'measuring_clip', 'model', 'report.json',
                  'loss_curve.png', 'samples.png', 'samples.json')


def prepare_workdir(workdir: str) -> None:
  """Create `workdir`, or clear the stage outputs of an older quickstart version from it."""
  stamp = os.path.join(workdir, 'quickstart_version')
  previous = open(stamp, encoding='utf-8').read().strip() if os.path.exists(stamp) else None
  stale = [n for n in _STAGE_OUTPUTS if os.path.exists(os.path.join(workdir, n))]
  if stale and previous != str(VERSION):
    logging.warning('%s holds outputs of quickstart version %s, not %d; removing %s.', workdir,
                    previous or '1', VERSION, stale)
    for name in stale:
      path = os.path.join(workdir, name)
      if os.path.isdir(path):
        shutil.rmtree(path)
      else:
        os.remove(path)
  os.makedirs(workdir, exist_ok=True)
  with open(stamp, 'w', encoding='utf-8') as f:
    f.write(str(VERSION))


def _run(args, env=None):
  """Run a stage's command, streaming its output; fail with the command line if it fails."""
  logging.info('Running: %s', ' '.join(args))
  result = subprocess.run(args, env=env, check=False)
  if result.returncode:
    raise RuntimeError(f'Stage failed (exit {result.returncode}): {" ".join(args)}')


def text_vocabulary(workdir: str) -> str:
  # Imported here: the tool's flags (a required --output) are not the quickstart's.
  from cm3leon_jax.cli import train_text_tokenizer  # pylint: disable=g-import-not-at-top
  path = os.path.join(workdir, 'data', 'text.model')
  if not os.path.exists(path):
    train_text_tokenizer.train(train_text_tokenizer.synthetic_captions(5000), path, 128)
  return path


def image_tokenizer(workdir: str) -> str:
  output = os.path.join(workdir, 'image_tokenizer')
  folder = os.path.join(output, 'tokenizer')
  if not os.path.exists(os.path.join(folder, 'config.json')):
    _run([sys.executable, '-m', 'cm3leon_jax.cli.train_image_tokenizer', f'--output_dir={output}',
          f'--steps={_TOKENIZER_STEPS.value}', '--eval_examples=200'])
  return folder


# The measuring CLIP trains on synthetic examples from here on: none of them is a training,
# validation or held-out example of the quickstart, nor one the retriever trained on.
MEASURING_CLIP_POOL_START = 5_000_000


def clip(workdir: str, name: str = 'clip', seed: int = 0, pool_start: int = 0) -> str:
  """A CLIP trained by tools/train_clip.py into <workdir>/<name>."""
  output = os.path.join(workdir, name)
  if not os.path.exists(os.path.join(output, 'metrics.json')):
    _run([sys.executable, '-m', 'cm3leon_jax.cli.train_clip', f'--output_dir={output}',
          f'--steps={_CLIP_STEPS.value}', f'--pool_size={_TRAIN_DOCUMENTS.value}',
          f'--pool_start={pool_start}', f'--seed={seed}', '--eval_examples=500'])
  return output


def measuring_clip(workdir: str) -> str:
  """The CLIP of the FD-CLIP report: not the retriever, or the metric would reward samples for
  resembling what the retriever chose."""
  return clip(workdir, 'measuring_clip', seed=1, pool_start=MEASURING_CLIP_POOL_START)


def store(workdir: str, text: str, image: str, clip_dir: str) -> str:
  """The synthetic store under <workdir>/data/synthetic (train and validation splits)."""
  from cm3leon_jax.data import preprocess  # pylint: disable=g-import-not-at-top
  from cm3leon_jax.data.sources import SyntheticSource  # pylint: disable=g-import-not-at-top
  store_dir = os.path.join(workdir, 'data', 'synthetic')
  for split, count in (('train', _TRAIN_DOCUMENTS.value),
                       ('validation', _VALIDATION_DOCUMENTS.value)):
    split_dir = os.path.join(store_dir, split)
    if not os.path.exists(os.path.join(split_dir, 'manifest.json')):
      config = preprocess.PreprocessConfig(split_dir, text, image, num_shards=4, batch_size=64,
                                           clip=clip_dir)
      preprocess.run(SyntheticSource(count, split), config)
  return store_dir


def retrieval(store_dir: str, clip_dir: str) -> str:
  """The train split's index, and both splits with neighbours in <store_dir>_retrieved."""
  from cm3leon_jax.retrieval import pipeline  # pylint: disable=g-import-not-at-top
  index_dir = os.path.join(store_dir, 'train', 'index')
  if not os.path.exists(os.path.join(index_dir, 'retrieval_index.json')):
    pipeline.run_build(pipeline.BuildConfig(os.path.join(store_dir, 'train'), clip_dir))
  for split in ('train', 'validation'):
    output = os.path.join(store_dir + '_retrieved', split)
    if not os.path.exists(os.path.join(output, 'manifest.json')):
      pipeline.run_retrieve(pipeline.RetrieveConfig(
          os.path.join(store_dir, split), index_dir, output,
          search_candidates=_SEARCH_CANDIDATES.value))
  return store_dir + '_retrieved'


def train(workdir: str) -> str:
  model_dir = os.path.join(workdir, 'model')
  env = dict(os.environ, CM3LEON_DATA_DIR=os.path.join(workdir, 'data'))
  _run([sys.executable, '-m', 'cm3leon_jax.train', '--gin_file=quickstart.gin',
        f"--gin.MODEL_DIR='{model_dir}'"] + [f'--gin.{b}' for b in _GIN_BINDINGS.value], env=env)
  return model_dir


def unigram_baseline(workdir: str) -> float:
  """Validation loss of predicting every token from the training token frequencies."""
  os.environ['CM3LEON_DATA_DIR'] = os.path.join(workdir, 'data')
  import gin  # pylint: disable=g-import-not-at-top
  from cm3leon_jax import gin_utils  # pylint: disable=g-import-not-at-top
  from cm3leon_jax.data import input_pipeline  # pylint: disable=g-import-not-at-top
  import tasks  # pylint: disable=g-import-not-at-top,unused-import  (registers the standard tasks)
  from cm3leon_jax.evaluation import unigram  # pylint: disable=g-import-not-at-top
  gin_utils.parse(['quickstart.gin'])
  lengths, batch = gin.query_parameter('%TASK_FEATURE_LENGTHS'), 16
  name = gin.query_parameter('%MIXTURE_OR_TASK_NAME')
  vocab_size = input_pipeline.vocabulary(name).vocab_size
  train_batches = input_pipeline.make_dataset(name, lengths, batch, seed=0).take(
      _BASELINE_BATCHES.value).as_numpy_iterator()
  counts = unigram.token_counts(train_batches, vocab_size)
  validation = input_pipeline.make_dataset(name, lengths, batch, split='validation',
                                           shuffle=False, num_epochs=1)
  return unigram.unigram_loss(counts, validation.as_numpy_iterator())


def sample_and_judge(workdir: str, model_dir: str, clip_dir: str) -> dict:
  """Draw held-out captions with and without CFG and caption held-out images; judge both, and
  measure the samples' FD-CLIP and CLIP score with the CLIP in `clip_dir`."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from cm3leon_jax.decoding import DecodingConfig  # pylint: disable=g-import-not-at-top
  from cm3leon_jax.evaluation import synthetic_eval  # pylint: disable=g-import-not-at-top
  from cm3leon_jax.decoding.pretrained import Pretrained  # pylint: disable=g-import-not-at-top
  from cm3leon_jax.training.metrics import image_grid  # pylint: disable=g-import-not-at-top
  pretrained = Pretrained.load(model_dir)
  examples = synthetic_eval.held_out_examples(_JUDGED_EXAMPLES.value,
                                              pretrained.image_tokenizer.config.resolution)
  captions = [e.caption for e in examples]
  sampling = DecodingConfig(temperature=1.0, top_p=0.9, seed=0)
  guided = dataclasses.replace(sampling, guidance_scale=_GUIDANCE_SCALE.value)
  with_cfg, images = synthetic_eval.evaluate_text_to_image(pretrained, captions, guided)
  without_cfg, unguided = synthetic_eval.evaluate_text_to_image(pretrained, captions, sampling)
  cfg_gain = {name: synthetic_eval.paired_difference(measure(images, captions),
                                                     measure(unguided, captions))
              for name, measure in (('main_object', synthetic_eval.main_object_passes),
                                    ('half_the_facts', synthetic_eval.half_the_facts),
                                    ('caption_score', synthetic_eval.caption_scores))}
  captioning, generated = synthetic_eval.evaluate_captioning(pretrained, examples,
                                                             DecodingConfig(temperature=0.0))
  grid_path = os.path.join(workdir, 'samples.png')
  Image.fromarray(image_grid(images[:16], columns=4)).save(grid_path)
  with open(os.path.join(workdir, 'samples.json'), 'w', encoding='utf-8') as f:
    json.dump({'grid': grid_path, 'captions_row_by_row': captions[:16],
               'decoding': dataclasses.asdict(guided),
               'generated_captions': [{'truth': c, 'generated': g}
                                      for c, g in zip(captions[:16], generated[:16])]}, f, indent=2)
  return {'held_out_examples': len(examples), 'guidance_scale': _GUIDANCE_SCALE.value,
          'text_to_image_with_cfg': with_cfg, 'text_to_image_without_cfg': without_cfg,
          'cfg_minus_no_cfg': cfg_gain,
          'captioning': captioning, 'samples_grid': grid_path,
          'fd_clip': fd_clip(pretrained, clip_dir, examples,
                             {'with_cfg': images, 'without_cfg': unguided}, sampling)}


def fd_clip(pretrained, clip_dir: str, examples, samples: dict, sampling) -> dict:
  """FD-CLIP and CLIP score of `samples` (name -> images, row i drawn from the caption of
  `examples[i]`), of as many samples at each --fd_clip_guidance_scale (named 'cfg_<scale>') and
  of as many unconditional samples, against the real images of `examples`; the floor is as many
  other real held-out images."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from cm3leon_jax.decoding import generation  # pylint: disable=g-import-not-at-top
  # pylint: disable-next=g-import-not-at-top
  from cm3leon_jax.evaluation import clip_metrics, fd_clip_report, synthetic_eval
  count, captions = len(examples), [e.caption for e in examples]
  samples = dict(samples)
  for scale in _FD_CLIP_SCALES.value:
    guided = dataclasses.replace(sampling, guidance_scale=scale)
    samples[f'cfg_{scale:g}'] = synthetic_eval.evaluate_text_to_image(pretrained, captions,
                                                                      guided)[1]
  samples['unconditional'] = generation.unconditional_images(pretrained, count, sampling)[0]
  floor = synthetic_eval.held_out_examples(count, pretrained.image_tokenizer.config.resolution,
                                           start=synthetic_eval.HELD_OUT_START + count)
  report = fd_clip_report.fd_clip_report(
      clip_metrics.ClipMetrics(clip_dir), np.stack([e.image for e in examples]),
      np.stack([e.image for e in floor]), samples, captions)
  return {'images_per_set': count, 'measuring_clip': clip_dir, **report}


def report(workdir: str, model_dir: str, baseline: float, seconds: float,
           retrieved_dir: str, judged: dict) -> dict:
  from cm3leon_jax.data.store import DocumentStore  # pylint: disable=g-import-not-at-top
  from cm3leon_jax.training import metrics  # pylint: disable=g-import-not-at-top
  records = metrics.read_metrics(os.path.join(model_dir, 'metrics.jsonl'))
  validation = [r for r in records if r['split'] == 'validation']
  curve = metrics.plot_loss_curve(
      records, os.path.join(workdir, 'loss_curve.png'), baseline=baseline,
      title='quickstart: tiny CM3Leon on synthetic data', baseline_label='unigram baseline')
  summary = {'validation_loss': validation[-1]['loss'], 'validation_step': validation[-1]['step'],
             'first_validation_loss': validation[0]['loss'], 'unigram_baseline': baseline,
             'loss_curve': curve, 'model_dir': model_dir, 'wall_seconds': round(seconds, 1),
             'validation_text_loss': validation[-1]['text_loss'],
             'validation_image_loss': validation[-1]['image_loss'],
             'documents_by_neighbour_count': {
                 split: DocumentStore(os.path.join(retrieved_dir, split)).manifest['retrieval'][
                     'documents_by_neighbour_count'] for split in ('train', 'validation')},
             'samples': judged}
  with open(os.path.join(workdir, 'report.json'), 'w', encoding='utf-8') as f:
    json.dump(summary, f, indent=2)
  return summary


def main(argv):
  del argv
  start = time.perf_counter()
  # The stages run in this process (preprocessing, retrieval, sampling) import TensorFlow later.
  cli.hide_gpus_from_tensorflow()
  workdir = os.path.abspath(_WORKDIR.value)
  prepare_workdir(workdir)
  _stage(1, 'the text vocabulary (a 128-piece BPE on synthetic captions)')
  text = text_vocabulary(workdir)
  _stage(2, f'the image tokenizer ({_TOKENIZER_STEPS.value} steps)')
  image = image_tokenizer(workdir)
  _stage(3, f'the CLIP retriever and the measuring CLIP ({_CLIP_STEPS.value} steps each)')
  clip_dir = clip(workdir)
  measuring_dir = measuring_clip(workdir)
  _stage(4, 'Beam preprocessing of the train and validation pairs into the store')
  store_dir = store(workdir, text, image, clip_dir)
  _stage(5, 'the memory-bank index and two retrieved neighbours per document')
  retrieved_dir = retrieval(store_dir, clip_dir)
  _stage(6, 'training with gin/quickstart.gin')
  model_dir = train(workdir)
  _stage(7, f'sampling and judging {_JUDGED_EXAMPLES.value} held-out examples')
  judged = sample_and_judge(workdir, model_dir, measuring_dir)
  _stage(8, 'the report (unigram baseline, loss curve)')
  summary = report(workdir, model_dir, unigram_baseline(workdir), time.perf_counter() - start,
                   retrieved_dir, judged)
  print(json.dumps(summary, indent=2))
  print(f"Validation loss {summary['validation_loss']:.3f} vs unigram baseline "
        f"{summary['unigram_baseline']:.3f}; curve: {summary['loss_curve']}")
  print(describe_samples(judged))


def _stage(number: int, what: str) -> None:
  """Say which stage starts (a stage whose output exists returns at once: the run resumes)."""
  logging.info('Stage %d/8: %s', number, what)


def describe_samples(judged: dict) -> str:
  """One paragraph of the judged samples' rates, with and without CFG, against chance."""
  guided, unguided = judged['text_to_image_with_cfg'], judged['text_to_image_without_cfg']
  rates = []
  for label, key, chance, style in (("main object", 'main_object', 'chance', '.1%'),
                                    ("at least half of the caption's facts", 'half_the_facts',
                                     'half_the_facts_chance', '.1%'),
                                    ("mean caption score", 'caption_score',
                                     'caption_score_chance', '.3f')):
    rates.append(f'{label} {guided[key]:{style}} with CFG, {unguided[key]:{style}} without, '
                 f'{guided[chance]:{style}} by chance')
  captioning, fd = judged['captioning'], judged['fd_clip']
  sets = (('real', 'real images'), ('with_cfg', f"CFG {judged['guidance_scale']:g}"),
          ('without_cfg', 'no CFG'),
          ('unconditional', 'unconditional'))
  sets += tuple((name, f'CFG {name[4:]}') for name in fd if name.startswith('cfg_'))
  distances = ', '.join(f"{label} {fd[name]['fd_clip']:.2f}" for name, label in sets)
  scores = ', '.join(f"{label} {fd[name]['clip_score']:.2f}" for name, label in sets)
  return (f"Samples ({judged['samples_grid']}): {'; '.join(rates)}. Captions name the image's "
          f"main object: {captioning['main_object']:.1%} (chance {captioning['chance']:.1%}). "
          f"FD-CLIP on {fd['images_per_set']} images per set (lower is nearer real images; real "
          f"images: two disjoint real sets): {distances}. CLIP score with the captions: "
          f"{scores}.")


def run():
  """Entry point of tools/quickstart.py and `cm3leon-quickstart`."""
  cli.run_app(main, __doc__)


if __name__ == '__main__':
  run()
