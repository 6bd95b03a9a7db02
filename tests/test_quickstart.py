"""The main job, tools/quickstart.py, end to end on tiny settings, and the sampling tools on the
model it trains."""

import json
import os
import pathlib

import numpy as np
from PIL import Image
import pytest

from helpers import run_tool
import shared_data


@pytest.fixture(scope='module')
def tiny_quickstart(tmp_path_factory):
  """The quickstart's workdir on tiny settings, run once; the tests below only read it."""
  def build(folder):
    run_tool(['tools/quickstart.py', f'--workdir={folder}', '--train_documents=300',
              '--validation_documents=100', '--tokenizer_steps=2', '--clip_steps=2',
              '--baseline_batches=10', '--judged_examples=8', '--gin_bindings=TRAIN_STEPS=20',
              '--gin_bindings=train.train.log_every=10',
              # One pass of the 300 documents fills the shuffle buffer (the default holds 10,000).
              '--gin_bindings=register_store_task.shuffle_buffer_size=300',
              '--fd_clip_guidance_scale=3'],
             env=dict(os.environ, JAX_PLATFORMS='cpu'), timeout=1200)

  return pathlib.Path(shared_data.cached_folder(tmp_path_factory, 'tiny_quickstart', build))


@pytest.mark.slow
def test_quickstart_main_job_end_to_end_on_tiny_settings(tiny_quickstart):
  report = json.loads((tiny_quickstart / 'report.json').read_text())
  assert report['validation_step'] == 20
  assert sum(report['documents_by_neighbour_count']['train'].values()) == 300
  # 20 steps on a 10-step tokenizer's codes: better than uniform guessing over the 1,536 ids (the
  # full quickstart's comparison with the unigram baseline is in the README).
  assert report['validation_loss'] < np.log(1536)
  assert np.isfinite(report['unigram_baseline'])
  assert (tiny_quickstart / 'loss_curve.png').stat().st_size > 1000
  for rates in (report['samples']['text_to_image_with_cfg'], report['samples']['captioning']):
    assert 0.0 <= rates['main_object'] <= 1.0 and 0.0 <= rates['chance'] <= 1.0
  assert (tiny_quickstart / 'samples.png').stat().st_size > 500


@pytest.mark.slow
def test_quickstart_reports_fd_clip_of_four_sets_measured_by_a_second_clip(tiny_quickstart):
  fd = json.loads((tiny_quickstart / 'report.json').read_text())['samples']['fd_clip']
  assert fd['images_per_set'] == 8
  # The report's scale (5) and the further scale measured by FD-CLIP alone.
  sets = ('real', 'with_cfg', 'without_cfg', 'unconditional', 'cfg_3')
  assert all(np.isfinite([fd[name]['fd_clip'], fd[name]['clip_score']]).all() for name in sets)
  # Two real sets are nearer each other than a 20-step model's samples are to real images.
  assert fd['real']['fd_clip'] < min(fd[name]['fd_clip'] for name in sets[1:])
  # The measuring CLIP is another model from the retriever, trained on other examples.
  retriever, measuring = (json.loads((tiny_quickstart / name / 'metrics.json').read_text())
                          for name in ('clip', 'measuring_clip'))
  assert fd['measuring_clip'] == str(tiny_quickstart / 'measuring_clip')
  assert (retriever['seed'], measuring['seed']) == (0, 1)
  assert retriever['pool_start'] + retriever['training_pairs'] <= measuring['pool_start']


@pytest.mark.slow
def test_generate_tool_draws_the_same_grid_from_the_run_and_its_export(tiny_quickstart, tmp_path):
  grid = tmp_path / 'grid.png'
  run_tool(['tools/generate.py', f'--checkpoint={tiny_quickstart / "model"}',
            '--prompt=a red circle', '--prompt=a small blue square', '--num_samples=2',
            f'--output={grid}'])
  settings = json.loads((tmp_path / 'grid.json').read_text())
  assert settings['prompts'] == ['a red circle', 'a small blue square']
  assert settings['decoding']['guidance_scale'] == 3.0
  with Image.open(grid) as image:  # 2 x 2 cells: 32 px scaled 4x to 128, with 2-px borders.
    assert image.size == (2 * 130 + 2, 2 * 130 + 2)
    pixels = np.asarray(image)
  # The exported folder samples the same grid (float32 export: the same parameters).
  exported = tmp_path / 'exported'
  run_tool(['tools/export.py', f'--checkpoint={tiny_quickstart / "model"}',
            f'--output_dir={exported}'])
  run_tool(['tools/generate.py', f'--checkpoint={exported}', '--prompt=a red circle',
            '--prompt=a small blue square', '--num_samples=2', f'--output={tmp_path / "e.png"}'])
  with Image.open(tmp_path / 'e.png') as image:
    np.testing.assert_array_equal(np.asarray(image), pixels)


@pytest.mark.slow
def test_caption_tool_captions_a_folder_and_names_a_broken_image(tiny_quickstart, tmp_path):
  images = tmp_path / 'images'
  images.mkdir()
  Image.fromarray(np.zeros((40, 48, 3), np.uint8)).save(images / 'black.png')
  (images / 'broken.png').write_bytes(b'not a png')
  run_tool(['tools/caption.py', f'--checkpoint={tiny_quickstart / "model"}', f'--images={images}',
            f'--output={tmp_path / "captions.jsonl"}'])
  lines = [json.loads(line) for line in (tmp_path / 'captions.jsonl').read_text().splitlines()]
  assert {os.path.basename(line['image']) for line in lines} == {'black.png', 'broken.png'}


@pytest.mark.slow
def test_the_fine_tuning_stage_continues_from_the_quickstart_and_judges_each_task(
    tiny_quickstart, tmp_path):
  workdir = tmp_path / 'workdir'
  workdir.mkdir()
  for name in ('model', 'data', 'image_tokenizer'):  # What the stage reads; it writes beside them.
    os.symlink(tiny_quickstart / name, workdir / name)
  run_tool(['tools/sft_quickstart.py', f'--workdir={workdir}', '--tasks=edit,vqa',
            '--train_documents=24', '--validation_documents=16', '--steps=4',
            '--judged_examples=4', '--gin_bindings=train.train.eval_every=4',
            '--gin_bindings=train.train.eval_batches=1', '--gin_bindings=train.train.log_every=2',
            '--gin_bindings=register_store_task.shuffle_buffer_size=24'],
           env=dict(os.environ, JAX_PLATFORMS='cpu'), timeout=1200)
  report = json.loads((workdir / 'sft_report.json').read_text())
  assert set(report['tasks']) == {'edit', 'vqa'} and report['steps'] == 4
  for result in report['tasks'].values():
    assert set(result['rates']) == {'pretrained', 'fine_tuned', 'baseline'}
    assert 3 <= result['examples'] <= 4  # A held-out scene may admit no edit.
    for key in ('fine_tuned_minus_pretrained', 'fine_tuned_minus_baseline'):
      gain = result[key]
      assert gain['ci95_low'] <= gain['difference'] <= gain['ci95_high']
  # Fine-tuning read the quickstart's parameters and trained on the mixture of both stores.
  model = json.loads((workdir / 'sft_model' / 'model.json').read_text())
  assert model['model_config'] == json.loads((tiny_quickstart / 'model' / 'model.json').read_text(
      ))['model_config']
  metrics = [json.loads(line) for line in (workdir / 'sft_model' / 'metrics.jsonl').open()]
  assert max(r['step'] for r in metrics if r['split'] == 'train') == 4
  for store in ('sft_edit', 'sft_vqa'):
    manifest = json.loads((workdir / 'sft_data' / store / 'train' / 'manifest.json').read_text())
    assert manifest['num_documents'] + manifest['num_bad'] == 24
