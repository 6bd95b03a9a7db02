r"""Zero-shot text-to-image FID, FD-CLIP, KID and CLIP score, the way the CM3Leon paper measured
FID on MS-COCO (arXiv 2309.02591, section 3.3).

The paper's protocol (its defaults here): 30,000 captions of MS-COCO val2014, one per image,
8 samples per caption re-ranked by CLIP and the best kept, pytorch-fid's InceptionV3 against the
statistics of the real val2014 images at the samples' resolution:

  python tools/eval_fid.py --checkpoint=/path/to/model --source=coco \
      --tfds_data_dir=~/tensorflow_datasets --inception=pt_inception-2015-12-05-6726825d.pth \
      --rerank_clip=/path/to/clip-vit-base-patch32 --metric_clip=/path/to/clip-vit-large-patch14 \
      --num_retrieved=2 --retrieval_index=/path/to/train2014_index --output_dir=/tmp/fid

Other prompt sources: --source=synthetic (held-out synthetic captions, with the synthetic
judge's scores) and --source=captions --captions_file=F (.txt, one caption per line, or .jsonl
with "text" and optional "image"). With --images=FOLDER and --reference_stats=X.npz, no model
runs: the folder's images are measured against the statistics, as pytorch-fid's command line does.

The run is resumable: finished shards of samples and their features stay in --output_dir/shards
and a rerun continues. Processes of a multi-process run (--coordinator_address, --num_processes,
--process_id, or --multihost on a TPU pod) share the shards; process 0 writes result.json, which
holds every setting, the protocol, the counts, the reference's preprocessing and the software
versions. Reference statistics are computed once and cached (--reference_cache); an `.npz` with
pytorch-fid's keys (`mu`, `sigma`, e.g. from `python -m pytorch_fid --save-stats`) can be given
with --reference_stats instead.
"""

import dataclasses
import json
import os
import platform
import time

import jax
import numpy as np
from absl import app, flags, logging

from cm3leon_jax import cli
from cm3leon_jax.cli import distributed
from cm3leon_jax.decoding import DecodingConfig
from cm3leon_jax.decoding.pretrained import Pretrained
from cm3leon_jax.evaluation import fid_run, fid_sources
from cm3leon_jax.evaluation.features import inception_features
from cm3leon_jax.evaluation.fid_sampling import Sampler
from cm3leon_jax.evaluation.statistics import load_reference
from cm3leon_jax.interop import pytorch_fid
from cm3leon_jax.models.inception import FEATURE_DIM

FLAGS = flags.FLAGS
SETTINGS_FILE = 'settings.json'
RESULT_FILE = 'result.json'


def define_flags():
  """The tool's flags (defined when run, so tests can import the module)."""
  flags.DEFINE_string('output_dir', None, 'Where shards, settings and result.json go.',
                      required=True)
  flags.DEFINE_string('checkpoint', None, 'A training run folder or an exported model.')
  flags.DEFINE_string('image_tokenizer', None, 'ImageTokenizer folder (default: the run\'s).')
  flags.DEFINE_enum('source', 'coco', ['coco', 'synthetic', 'captions'], 'Where prompts and '
                    'real images come from.')
  flags.DEFINE_integer('num_captions', 30_000, 'Captions to evaluate (one per image).')
  flags.DEFINE_integer('caption_seed', 0, 'Seed of the caption draw.')
  flags.DEFINE_string('tfds_data_dir', None, 'tensorflow-datasets data_dir with coco_captions.')
  flags.DEFINE_string('captions_file', None, '--source=captions: a .txt or .jsonl file.')
  flags.DEFINE_string('images', None, 'A folder of images to measure against --reference_stats '
                      '(no model).')
  flags.DEFINE_string('inception', None, "pytorch-fid's weight file (or its safetensors "
                      f'conversion); default ${pytorch_fid.ENV_VAR}, else the hub cache.')
  flags.DEFINE_string('rerank_clip', None, 'CLIP folder that re-ranks each caption\'s samples.')
  flags.DEFINE_string('metric_clip', None, 'CLIP folder for FD-CLIP and the CLIP score; should '
                      'not be the re-ranking one.')
  flags.DEFINE_string('reference_stats', None, 'Inception reference statistics (.npz with mu, '
                      'sigma); default: computed from the source\'s images and cached.')
  flags.DEFINE_string('reference_cache', os.path.expanduser('~/.cache/cm3leon_jax/fid'),
                      'Folder of cached reference statistics.')
  flags.DEFINE_integer('num_samples', 8, 'Samples per caption; CLIP keeps the best.')
  flags.DEFINE_float('guidance_scale', 3.0, 'Classifier-free guidance scale (0: none).')
  flags.DEFINE_float('temperature', 1.0, 'Softmax temperature.')
  flags.DEFINE_float('top_p', 0.9, 'Top-p filter (1: off).')
  flags.DEFINE_float('cd_k_fraction', 0.0, 'Share of samples drawn with CD-K.')
  flags.DEFINE_integer('seed', 0, 'Sampling seed (each shard derives its own).')
  flags.DEFINE_string('retrieval_index', None, 'Memory-bank index of the training images.')
  flags.DEFINE_integer('num_retrieved', 0, 'Documents retrieved per caption (paper: 0, 1, 2).')
  flags.DEFINE_integer('shard_size', 50, 'Prompts per resumable shard.')
  flags.DEFINE_integer('batch_prompts', 8, 'Prompts decoded together.')
  flags.DEFINE_integer('feature_batch', 50, 'Images per Inception / CLIP call.')
  flags.DEFINE_integer('kid_subsets', 100, 'KID subsets.')
  flags.DEFINE_integer('kid_subset_size', 1000, 'KID subset size.')
  flags.DEFINE_bool('pytorch_fid_form', True, 'Also compute FID as pytorch-fid does (scipy '
                    'sqrtm, ~10 s on a 2-core CPU); the eigenvalue form is always computed.')
  distributed.define_model_flags(fsdp=-1)
  distributed.define_flags()


def settings() -> dict:
  """Every setting that decides the result (a resumed run must have the same)."""
  names = ('checkpoint', 'image_tokenizer', 'source', 'num_captions', 'caption_seed',
           'tfds_data_dir', 'captions_file', 'images', 'inception', 'rerank_clip', 'metric_clip',
           'reference_stats', 'num_samples', 'guidance_scale', 'temperature', 'top_p',
           'cd_k_fraction', 'seed', 'retrieval_index', 'num_retrieved', 'shard_size',
           'batch_prompts', 'kid_subsets', 'kid_subset_size')
  return {name: FLAGS[name].value for name in names}


def check_settings(output_dir: str) -> None:
  """Write settings.json, or check that a resumed run keeps the same settings."""
  path = os.path.join(output_dir, SETTINGS_FILE)
  current = settings()
  if os.path.exists(path):
    with open(path, encoding='utf-8') as f:
      previous = json.load(f)
    changed = {k: (previous.get(k), v) for k, v in current.items() if previous.get(k) != v}
    if changed:
      raise app.UsageError(f'{output_dir} holds a run with other settings {changed} '
                           '(before, now); use another --output_dir.')
  elif jax.process_index() == 0:
    os.makedirs(output_dir, exist_ok=True)
    with open(path, 'w', encoding='utf-8') as f:
      json.dump(current, f, indent=2, sort_keys=True)


def make_source(resolution: int):
  """The prompt source the flags name."""
  if FLAGS.source == 'coco':
    return fid_sources.CocoVal2014(FLAGS.num_captions, FLAGS.caption_seed, FLAGS.tfds_data_dir)
  if FLAGS.source == 'synthetic':
    return fid_sources.SyntheticPrompts(FLAGS.num_captions, resolution)
  if not FLAGS.captions_file:
    raise app.UsageError('--source=captions needs --captions_file.')
  return fid_sources.CaptionFile(FLAGS.captions_file, FLAGS.num_captions)


def decoding_config() -> DecodingConfig:
  """The sampling settings the flags describe."""
  return DecodingConfig(temperature=FLAGS.temperature, top_p=FLAGS.top_p,
                        num_decodes=FLAGS.num_samples,
                        guidance_scale=FLAGS.guidance_scale or None,
                        cd_k_fraction=FLAGS.cd_k_fraction, seed=FLAGS.seed)


def measurements(judge: bool) -> fid_run.Measurements:
  """The Inception (and CLIP) measuring the images, on this process's devices."""
  inception = inception_features(FLAGS.inception, FLAGS.feature_batch)
  clip = None
  if FLAGS.metric_clip:
    from cm3leon_jax.evaluation.clip_metrics import ClipMetrics  # pylint: disable=g-import-not-at-top
    clip = ClipMetrics(FLAGS.metric_clip, FLAGS.feature_batch)
  if FLAGS.metric_clip and FLAGS.rerank_clip and \
      os.path.realpath(FLAGS.metric_clip) == os.path.realpath(FLAGS.rerank_clip):
    logging.warning('--metric_clip is the re-ranking CLIP: FD-CLIP and the CLIP score then '
                    'reward the re-ranker\'s own choices.')
  return fid_run.Measurements(inception, clip, judge)


def reference_paths(source, measure: fid_run.Measurements, resolution: int) -> dict:
  """The reference statistics: --reference_stats (Inception), else cached ones of the source."""
  weights = pytorch_fid.find_weights(FLAGS.inception)
  key = fid_run.fingerprint(source.reference_images_description(), resolution,
                            fid_run.file_fingerprint(weights),
                            measure.clip and measure.clip.encoder.info.fingerprint)
  prefix = os.path.join(FLAGS.reference_cache, f'{source.name}_{resolution}px_{key}')
  if FLAGS.reference_stats:
    load_reference(FLAGS.reference_stats, FEATURE_DIM)  # Another width fails here, named.
    paths = {'inception': FLAGS.reference_stats}
    if measure.clip is not None:  # FD-CLIP still needs the source's images.
      paths['clip'] = fid_run.reference_statistics(
          source, fid_run.Measurements(measure.inception, measure.clip), resolution, prefix,
          FLAGS.feature_batch)['clip']
    return paths
  return fid_run.reference_statistics(source, measure, resolution, prefix, FLAGS.feature_batch)


def _barrier(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)


def software_versions() -> dict:
  import flax, scipy  # pylint: disable=g-import-not-at-top,multiple-imports
  from importlib import metadata  # pylint: disable=g-import-not-at-top
  return {'cm3leon_jax': metadata.version('cm3leon_jax'), 'jax': jax.__version__,
          'jaxlib': metadata.version('jaxlib'), 'flax': flax.__version__,
          'numpy': np.__version__, 'scipy': scipy.__version__,
          'python': platform.python_version(), 'devices': str(jax.devices()[0].platform)}


def write_result(output_dir: str, result: dict) -> str:
  path = os.path.join(output_dir, RESULT_FILE)
  with open(path, 'w', encoding='utf-8') as f:
    json.dump(result, f, indent=2, sort_keys=True)
  return path


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  distributed.initialize()
  start = time.time()
  if FLAGS.images:
    result = fid_run.evaluate_folder(FLAGS.images, FLAGS.reference_stats,
                                     fid_run.Measurements(inception_features(
                                         FLAGS.inception, FLAGS.feature_batch)), distance_settings())
  else:
    result = evaluate_model(start)
  if jax.process_index() == 0:
    result.update(elapsed_seconds=round(time.time() - start, 1), software=software_versions())
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    print(write_result(FLAGS.output_dir, result))
    print(json.dumps(headline(result)))


def distance_settings() -> fid_run.DistanceSettings:
  return fid_run.DistanceSettings(FLAGS.kid_subsets, FLAGS.kid_subset_size,
                                  FLAGS.pytorch_fid_form)


def headline(result: dict) -> dict:
  """The figures a reader looks for first."""
  metrics = result['metrics']
  # pytorch-fid's form where it was computed (the published figures' form), else the eigh form.
  pick = lambda d: d['frechet_distance_eigh'] if d.get('frechet_distance') is None \
      else d['frechet_distance']
  out = {'fid': pick(metrics['fid'])}
  if 'fd_clip' in metrics:
    out['fd_clip'] = pick(metrics['fd_clip'])
  if 'clip_score' in metrics:
    out['clip_score'] = metrics['clip_score']
  return out


def evaluate_model(start: float) -> dict:
  """Sample every caption's images in shards, then measure them against the reference."""
  if not FLAGS.checkpoint:
    raise app.UsageError('Give --checkpoint (a model to sample), or --images and '
                         '--reference_stats (a folder to measure).')
  check_settings(FLAGS.output_dir)
  pretrained = Pretrained.load(FLAGS.checkpoint, FLAGS.image_tokenizer,
                               mesh=distributed.local_mesh(), dtype=FLAGS.dtype)
  resolution = pretrained.image_tokenizer.config.resolution
  source = make_source(resolution)
  prompts = source.prompts()
  _warn_if_short(len(prompts))
  measure = measurements(judge=FLAGS.source == 'synthetic')
  # Process 0 alone summarises, so it alone needs (and computes, once) the reference.
  references = reference_paths(source, measure, resolution) if jax.process_index() == 0 else {}
  sampler = Sampler(pretrained, decoding_config(), FLAGS.rerank_clip, FLAGS.retrieval_index,
                    FLAGS.num_retrieved, FLAGS.batch_prompts, [p.image_id for p in prompts])
  fid_run.run_shards(prompts, sampler, measure, FLAGS.output_dir, FLAGS.shard_size,
                     jax.process_index(), jax.process_count())
  _barrier('shards')
  if jax.process_index() != 0:
    return {}
  merged = fid_run.read_shards(FLAGS.output_dir, len(prompts), FLAGS.shard_size)
  return {
      'metrics': fid_run.summarise(merged, references, distance_settings()),
      'protocol': {'source': source.describe(), 'samples_per_caption': FLAGS.num_samples,
                   'kept_per_caption': 1, 'rerank': 'CLIP similarity to the caption'
                   if FLAGS.rerank_clip else 'none (the first sample)',
                   'resolution': resolution, 'num_retrieved': FLAGS.num_retrieved,
                   'decoding': dataclasses.asdict(sampler.config),
                   'reference': {'files': references,
                                 'preprocessing': fid_sources.REFERENCE_PREPROCESSING},
                   'inception': 'pytorch-fid InceptionV3 (2015-12-05 TF weights), pool3, 2048-d',
                   'frechet_distance': 'pytorch-fid\'s sqrtm form; frechet_distance_eigh: the '
                                       'symmetric eigenvalue form'},
      'counts': {'captions_requested': FLAGS.num_captions, 'captions_evaluated': len(prompts),
                 'samples_drawn': len(prompts) * FLAGS.num_samples,
                 'skipped_source_records': source.skipped,
                 'processes': jax.process_count()},
      'settings': settings(),
  }


def _warn_if_short(count: int) -> None:
  if count < FLAGS.num_captions:
    logging.warning('Only %d captions are available of the %d the protocol asks for; the result '
                    'records the count, and FID is biased upwards at smaller counts.', count,
                    FLAGS.num_captions)


def run():
  """Entry point of tools/eval_fid.py and `cm3leon-eval-fid`."""
  define_flags()
  cli.run_app(main, __doc__)


if __name__ == '__main__':
  run()
