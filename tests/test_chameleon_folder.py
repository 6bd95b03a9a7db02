"""A Chameleon checkpoint folder in transformers' layout, loaded by Pretrained.load and sampled
from, against transformers and taming as the oracles.

The folder is written by the test: a tiny random ChameleonForConditionalGeneration whose VQ-VAE
is a tiny random taming VQ-GAN's encoder, a tokenizer.json in Chameleon's layout (image codes not
in id order), and Meta's vqgan.ckpt + vqgan.yaml of the same VQ-GAN in tokenizer/ for decoding.
"""

import copy
import dataclasses
import json
import os
import shutil

import numpy as np
from PIL import Image as PILImage
import pytest
import tokenizers
import torch
import yaml
from transformers import ChameleonConfig, ChameleonForConditionalGeneration
from transformers.models.chameleon.modeling_chameleon import ChameleonImageVocabularyMapping

from flax import traverse_util

from cm3leon_jax import interop, partitioning
from cm3leon_jax.decoding import DecodingConfig, generate, generation
from cm3leon_jax.decoding.chameleon_folder import ChameleonFolderError
from cm3leon_jax.decoding.export import export_model
from cm3leon_jax.decoding.pretrained import Pretrained, PretrainedError
from cm3leon_jax.interop import taming_reference
from cm3leon_jax.interop.errors import CheckpointMismatchError
from cm3leon_jax.interop.meta_chameleon import load_meta_chameleon
from cm3leon_jax.interop.meta_to_transformers import convert_to_transformers
from cm3leon_jax.models.vqgan_config import VQGANConfig
from cm3leon_jax.tokenizers.chameleon import ChameleonVocabularyError
from cm3leon_jax.tokenizers.multimodal import Image, Text
import chameleon_files
from helpers import run_tool

CODES = 16
VQ = VQGANConfig(resolution=16, ch=32, ch_mult=(1, 1, 1), num_res_blocks=1, z_channels=32,
                 embed_dim=4, n_embed=CODES)
TOKENS_PER_IMAGE = (16 // 4) ** 2
CAPTION = 'a red circle left of a small blue square'
GREEDY = DecodingConfig(temperature=0.0)


def _hf_vq_config():
  return dict(embed_dim=VQ.embed_dim, num_embeddings=VQ.n_embed, double_latent=False,
              latent_channels=VQ.z_channels, resolution=VQ.resolution, in_channels=3,
              base_channels=VQ.ch, channel_multiplier=list(VQ.ch_mult),
              num_res_blocks=VQ.num_res_blocks, attn_resolutions=[], dropout=0.0,
              attn_type='vanilla')


def _meta_yaml():
  dd = dict(double_z=False, z_channels=VQ.z_channels, resolution=VQ.resolution, in_channels=3,
            out_ch=3, ch=VQ.ch, ch_mult=list(VQ.ch_mult), num_res_blocks=VQ.num_res_blocks,
            attn_resolutions=[], dropout=0.0)
  return {'model': {'target': 'taming.models.vqgan.VQModel',
                    'params': {'embed_dim': VQ.embed_dim, 'n_embed': VQ.n_embed, 'ddconfig': dd}}}


def _taming_vqgan():
  """A random taming VQ-GAN with norms away from identity and a codebook on the latents' scale."""
  model = taming_reference.build_vqmodel(VQ, seed=1)
  with torch.no_grad():
    for module in model.modules():
      if isinstance(module, torch.nn.GroupNorm):
        module.weight.normal_(1.0, 0.3)
        module.bias.normal_(0.0, 0.3)
    latents = model.quant_conv(model.encoder(torch.rand(4, 3, 16, 16) * 2 - 1))
    model.quantize.embedding.weight.normal_(0.0, float(latents.std()))
  return model


def _hf_chameleon(names, vqgan):
  config = ChameleonConfig(
      vocab_size=512, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
      rms_norm_eps=1e-6, rope_parameters={'rope_type': 'default', 'rope_theta': 500.0},
      vq_config=_hf_vq_config(), vocabulary_map=names, attn_implementation='eager')
  torch.manual_seed(0)
  model = ChameleonForConditionalGeneration(config).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if 'vqmodel' not in name:
        p.normal_(1.0 if 'norm.weight' in name else 0.0, 0.3 if 'norm' in name else 0.1)
  encoder_half = {k: v for k, v in vqgan.state_dict().items() if not k.startswith('decoder.')}
  missing, unexpected = model.model.vqmodel.load_state_dict(encoder_half, strict=False)
  assert not missing and not unexpected
  return model


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
  """(folder, transformers model, taming VQ-GAN, the tokenizer's name -> id map)."""
  folder = tmp_path_factory.mktemp('chameleon')
  names = chameleon_files.write_tokenizer(  # As transformers' release: with <image>.
      str(folder / 'tokenizer.json'), CODES,
      image_placeholder=chameleon_files.TRANSFORMERS_PLACEHOLDER)
  vqgan = _taming_vqgan()
  model = _hf_chameleon(names, vqgan)
  model.save_pretrained(str(folder))
  (folder / 'tokenizer').mkdir()
  torch.save({'state_dict': vqgan.state_dict()}, str(folder / 'tokenizer' / 'vqgan.ckpt'))
  (folder / 'tokenizer' / 'vqgan.yaml').write_text(yaml.safe_dump(_meta_yaml()))
  return folder, model, vqgan, names


@pytest.fixture(scope='module')
def pretrained(checkpoint):
  return Pretrained.load(str(checkpoint[0]), dtype='float32')


def _oracle_image(model, prompt, names):
  """transformers' greedy image after `prompt` (checkpoint ids), its masking of image tokens
  undone (logits straight from lm_head) and the same span rule: N image tokens, then <eoss>."""
  image_ids = sorted(v for k, v in names.items() if k.startswith('IMGIMG'))
  ids = list(prompt)
  with torch.no_grad():
    for step in range(TOKENS_PER_IMAGE + 1):
      hidden = model.model(input_ids=torch.tensor([ids])).last_hidden_state
      logits = model.lm_head(hidden[0, -1])
      allowed = image_ids if step < TOKENS_PER_IMAGE else [names['<eoss>']]
      blocked = torch.full_like(logits, float('-inf'))
      blocked[allowed] = 0.0
      ids.append(int(torch.argmax(logits + blocked)))
  return ids[len(prompt):]


def test_greedy_text_to_image_equals_transformers_and_decodes_as_taming(checkpoint, pretrained):
  _, model, vqgan, names = checkpoint
  vocab = pretrained.vocab
  assert pretrained.tokens_per_image == TOKENS_PER_IMAGE
  prompt = [vocab.bos_id] + vocab.encode(CAPTION) + [vocab.break_id]
  config = DecodingConfig(max_new_tokens=TOKENS_PER_IMAGE + 1, temperature=0.0,
                          tokens_per_image=TOKENS_PER_IMAGE)
  ours = generate(pretrained.model, pretrained.params, [prompt], config, vocab).tokens[0, 0]
  theirs = _oracle_image(model, vocab.checkpoint_ids(prompt).tolist(), names)
  np.testing.assert_array_equal(ours, vocab.library_ids(theirs))
  assert theirs[-1] == names['<eoss>'] and len(set(theirs[:-1])) > 2
  # The public text-to-image call lays the prompt out the same way: <s> caption <racm3:break>.
  images, ids = generation.text_to_image(pretrained, [CAPTION], config)
  np.testing.assert_array_equal(ids[0, 0], ours[:-1])
  # The codes are the names' codes, as transformers' own map reads them.
  codes = vocab.image_codes(ours[:-1])
  mapping = ChameleonImageVocabularyMapping(names)
  assert codes.tolist() == [mapping.bpe2img[t] for t in theirs[:-1]]
  pixels = np.asarray(pretrained.image_tokenizer.decode(codes.reshape(1, 4, 4)))
  with torch.no_grad():
    latents = vqgan.quantize.get_codebook_entry(torch.from_numpy(codes.astype(np.int64)),
                                                (1, 4, 4, VQ.embed_dim))
    want = vqgan.decoder(vqgan.post_quant_conv(latents)).permute(0, 2, 3, 1).numpy()
  assert want.std() > 0.05
  np.testing.assert_allclose(pixels, want, atol=1e-4)
  assert images.shape == (1, 1, 16, 16, 3) and images.dtype == np.uint8


def _oracle_guided_image(model, prompt, names, text_scale, image_scale):
  """Greedy image under Chameleon's in-batch guidance, as its inference code builds the streams:
  the full prompt; only <s>, <racm3:break>, <eoss> and image tokens; <s> <racm3:break>. Without
  an image scale, the first and the last (two-stream guidance)."""
  image_ids = sorted(v for k, v in names.items() if k.startswith('IMGIMG'))
  kept = set(image_ids) | {names['<s>'], names['<racm3:break>'], names['<eoss>']}
  streams = [list(prompt), [t for t in prompt if t in kept], [names['<s>'], names['<racm3:break>']]]
  out = []
  with torch.no_grad():
    for step in range(TOKENS_PER_IMAGE + 1):
      full, image, uncond = (model.lm_head(model.model(input_ids=torch.tensor([s + out]))
                                           .last_hidden_state[0, -1]) for s in streams)
      if image_scale is None:
        mixed = uncond + text_scale * (full - uncond)
      else:
        mixed = uncond + image_scale * (image - uncond) + text_scale * (full - image)
      allowed = image_ids if step < TOKENS_PER_IMAGE else [names['<eoss>']]
      blocked = torch.full_like(mixed, float('-inf'))
      blocked[allowed] = 0.0
      out.append(int(torch.argmax(mixed + blocked)))
  return out


@pytest.mark.parametrize('image_scale', [1.2, None], ids=['three_streams', 'two_streams'])
def test_chameleons_in_batch_guidance_equals_its_inference_codes_streams(checkpoint, pretrained,
                                                                        image_scale):
  _, model, _, names = checkpoint
  vocab = pretrained.vocab
  image = vocab.image_ids(np.arange(CODES)[::-1]).tolist()
  prompt = ([vocab.bos_id] + vocab.encode('Edit') + [vocab.break_id] + image + [vocab.eoss_id] +
            vocab.encode(CAPTION) + [vocab.break_id])
  defaults = generation.CHAMELEON_IMAGE_DECODING
  assert (defaults.guidance_scale, defaults.image_guidance_scale) == (3.0, 1.2)
  config = dataclasses.replace(defaults, max_new_tokens=TOKENS_PER_IMAGE + 1, temperature=0.0,
                               tokens_per_image=TOKENS_PER_IMAGE, image_guidance_scale=image_scale)
  ours = generate(pretrained.model, pretrained.params, [prompt], config, vocab).tokens[0, 0]
  theirs = _oracle_guided_image(model, vocab.checkpoint_ids(prompt).tolist(), names, 3.0,
                                image_scale)
  np.testing.assert_array_equal(ours, vocab.library_ids(theirs))
  unguided = generate(pretrained.model, pretrained.params, [prompt],
                      dataclasses.replace(config, guidance_scale=None, image_guidance_scale=None),
                      vocab).tokens[0, 0]
  assert (unguided != ours).any()  # Guidance changed the image: the streams matter.


def test_greedy_caption_of_an_image_equals_transformers_generate(checkpoint, pretrained):
  _, model, _, names = checkpoint
  vocab = pretrained.vocab
  codes = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7, 9, 3]
  image = vocab.image_ids(codes).tolist()
  mapping = ChameleonImageVocabularyMapping(names)
  assert image == vocab.library_ids([mapping.img2bpe[c] for c in codes]).tolist()
  prompt = ([vocab.bos_id] + vocab.encode('Describe') + [vocab.break_id] + image +
            [vocab.eoss_id] + vocab.encode(' it:'))
  config = DecodingConfig(max_new_tokens=12, temperature=0.0, tokens_per_image=TOKENS_PER_IMAGE,
                          generate_images=False, stop_ids=(vocab.eos_id,), pad_id=vocab.eos_id)
  samples = generate(pretrained.model, pretrained.params, [prompt], config, vocab)
  ours = samples.tokens[0, 0, :samples.num_tokens[0, 0]]
  with torch.no_grad():
    out = model.generate(torch.tensor([vocab.checkpoint_ids(prompt).tolist()]),
                         max_new_tokens=12, do_sample=False)
  theirs = out[0, len(prompt):].tolist()
  np.testing.assert_array_equal(ours, vocab.library_ids(theirs))
  assert not vocab.is_image(ours).any() and len(ours) > 3


def _oracle_interleaved(model, prompt, names, steps):
  """transformers' greedy continuation, its image masking undone, with the modality rule: after
  <racm3:break> exactly N image tokens then <eoss>; outside an image no image token."""
  image_ids = sorted(v for k, v in names.items() if k.startswith('IMGIMG'))
  text_ids = sorted(set(range(model.config.vocab_size)) - set(image_ids))
  ids, left = list(prompt), None
  with torch.no_grad():
    for _ in range(steps):
      logits = model.lm_head(model.model(input_ids=torch.tensor([ids])).last_hidden_state[0, -1])
      allowed = text_ids if left is None else image_ids if left else [names['<eoss>']]
      blocked = torch.full_like(logits, float('-inf'))
      blocked[allowed] = 0.0
      ids.append(int(torch.argmax(logits + blocked)))
      if ids[-1] == names['</s>']:
        break
      if left is None and ids[-1] == names['<racm3:break>']:
        left, opened = TOKENS_PER_IMAGE, len(ids) - 1
      elif left is not None:
        left = None if left == 0 else left - 1
  # An image the step limit cuts short is left out, with its <racm3:break>.
  return ids[len(prompt):opened if left is not None else None]


INTERLEAVED = [Text('Describe'), Image(np.arange(CODES) % 7), Text(' and draw it')]


@pytest.fixture(scope='module')
def image_opening(checkpoint, pretrained, tmp_path_factory):
  """(transformers model, Pretrained) of the checkpoint with <racm3:break>'s output row 1.2 times
  that of the token the model first picks after INTERLEAVED (whose logit is positive), so that
  its greedy continuation opens an image there: a random model's never does."""
  source, model, _, names = checkpoint
  vocab = pretrained.vocab
  model = copy.deepcopy(model)
  prompt = vocab.checkpoint_ids([vocab.bos_id] + vocab.encode_document(INTERLEAVED)).tolist()
  with torch.no_grad():
    logits = model.lm_head(model.model(input_ids=torch.tensor([prompt])).last_hidden_state[0, -1])
    first = int(torch.argmax(logits))
    assert logits[first] > 0 and first != names['<racm3:break>']
    model.lm_head.weight[names['<racm3:break>']] = 1.2 * model.lm_head.weight[first]
  folder = tmp_path_factory.mktemp('image_opening')
  model.save_pretrained(str(folder))
  shutil.copy(source / 'tokenizer.json', folder)
  shutil.copytree(source / 'tokenizer', folder / 'tokenizer')
  return model, Pretrained.load(str(folder), dtype='float32')


def test_an_interleaved_continuation_equals_transformers_text_and_images(checkpoint,
                                                                        image_opening):
  names = checkpoint[3]
  model, pretrained = image_opening
  vocab = pretrained.vocab
  prompt = [vocab.bos_id] + vocab.encode_document(INTERLEAVED)
  steps = pretrained.model.config.max_length - len(prompt)
  theirs = vocab.library_ids(_oracle_interleaved(model, vocab.checkpoint_ids(prompt).tolist(),
                                                 names, steps))
  segments = generation.continue_document(pretrained, [INTERLEAVED], GREEDY, steps)[0][0]
  assert segments == vocab.decode_document(theirs.tolist())
  images = [s for s in segments if isinstance(s, Image)]
  assert images and all(len(image.codes) == TOKENS_PER_IMAGE for image in images)
  assert segments.index(images[0]) < len(segments) - 1  # Closed by <eoss>, then it went on.


def test_greedy_text_about_pixels_equals_transformers_with_its_image_placeholder(checkpoint,
                                                                              pretrained):
  _, model, _, names = checkpoint
  vocab = pretrained.vocab
  pixels = np.random.default_rng(2).uniform(-1, 1, (1, 16, 16, 3)).astype(np.float32)
  image = pretrained.encode_images(pixels)[0].tolist()
  assert len(set(image)) > 2

  def prompt(image_ids):
    return ([vocab.bos_id] + vocab.encode('Describe') + [vocab.break_id] + image_ids +
            [vocab.eoss_id] + vocab.encode(' it:'))

  config = DecodingConfig(max_new_tokens=12, temperature=0.0, tokens_per_image=TOKENS_PER_IMAGE,
                          generate_images=False, stop_ids=(vocab.eos_id,), pad_id=vocab.eos_id)
  samples = generate(pretrained.model, pretrained.params, [prompt(image)], config, vocab)
  ours = samples.tokens[0, 0, :samples.num_tokens[0, 0]]
  # transformers: the placeholder repeated where the image goes, its VQ encoder on the pixels.
  placeholders = vocab.checkpoint_ids(prompt([-1] * TOKENS_PER_IMAGE))
  placeholders[placeholders == -1] = names[chameleon_files.TRANSFORMERS_PLACEHOLDER]
  with torch.no_grad():
    out = model.generate(torch.tensor([placeholders.tolist()]), max_new_tokens=12,
                         pixel_values=torch.from_numpy(pixels).permute(0, 3, 1, 2),
                         do_sample=False)
  np.testing.assert_array_equal(ours, vocab.library_ids(out[0, len(placeholders):].numpy()))
  assert len(ours) > 3


def test_exporting_a_loaded_checkpoint_writes_that_checkpoint_back(checkpoint, pretrained,
                                                                  tmp_path):
  folder, model, _, names = checkpoint
  output = export_model(pretrained, str(tmp_path / 'export'))
  assert sorted(os.listdir(output)) == ['config.json', 'model.safetensors', 'tokenizer',
                                        'tokenizer.json']
  assert (tmp_path / 'export' / 'tokenizer.json').read_bytes() == (
      folder / 'tokenizer.json').read_bytes()
  exported, info = ChameleonForConditionalGeneration.from_pretrained(
      output, output_loading_info=True, attn_implementation='eager')
  assert not info['missing_keys'] and not info['unexpected_keys'], info
  want, got = model.state_dict(), exported.state_dict()
  assert got.keys() == want.keys()
  for name, tensor in want.items():  # In the checkpoint's ids: <s> and <pad> back in place.
    assert torch.equal(got[name], tensor), name
  config = exported.config
  assert config.vocabulary_map == names
  assert (config.bos_token_id, config.eos_token_id, config.pad_token_id) == (
      names['<s>'], names['</s>'], names['<pad>'])
  back = Pretrained.load(output, dtype='float32')
  flat, expected = (traverse_util.flatten_dict(p.params, sep='/') for p in (back, pretrained))
  assert flat.keys() == expected.keys()
  for path in flat:
    np.testing.assert_array_equal(flat[path], expected[path], err_msg=path)
  np.testing.assert_array_equal(generation.text_to_image(back, [CAPTION], GREEDY)[0],
                                generation.text_to_image(pretrained, [CAPTION], GREEDY)[0])


def test_generation_calls_use_chameleons_layout(checkpoint, pretrained):
  _, model, _, _ = checkpoint
  vocab = pretrained.vocab
  codes = np.arange(CODES)[None] % 5
  captions = generation.caption(pretrained, vocab.image_ids(codes), DecodingConfig(temperature=0))
  prompt = [vocab.bos_id, vocab.break_id] + vocab.image_ids(codes[0]).tolist() + [vocab.eoss_id]
  with torch.no_grad():
    out = model.generate(torch.tensor([vocab.checkpoint_ids(prompt).tolist()]),
                         max_new_tokens=32, do_sample=False)
  theirs = vocab.library_ids(out[0, len(prompt):].numpy())
  stops = np.flatnonzero(~vocab.is_text(theirs))
  text = theirs[:stops[0]] if stops.size else theirs
  assert captions == [[vocab.decode(text.tolist())]] and len(text) > 2
  # Sampling with two-stream guidance, and unconditional images (prompt <s> <racm3:break>).
  images, ids = generation.text_to_image(pretrained, [CAPTION], DecodingConfig(
      guidance_scale=3.0, top_p=0.9, num_decodes=2))
  assert images.shape == (1, 2, 16, 16, 3) and vocab.is_image(ids).all()
  images, ids = generation.unconditional_images(pretrained, 3, DecodingConfig(seed=1))
  assert images.shape == (3, 16, 16, 3) and vocab.is_image(ids).all()


@pytest.mark.slow
def test_generate_and_caption_tools_take_the_folder(checkpoint, tmp_path):
  folder = checkpoint[0]
  grid = tmp_path / 'grid.png'
  # Laid out over the 8 CPU devices the tests force (fsdp), in bf16 as a 7B would be.
  run_tool(['tools/generate.py', f'--checkpoint={folder}', f'--prompt={CAPTION}',
            '--num_samples=2', f'--output={grid}', '--mesh_fsdp=-1'])
  with PILImage.open(grid) as image:  # 16-pixel samples shown 8 times larger, 2-pixel borders.
    assert image.size == (2 * 130 + 2, 130 + 2)
  images = tmp_path / 'images'
  images.mkdir()
  PILImage.fromarray(np.full((20, 24, 3), 200, np.uint8)).save(images / 'grey.png')
  run_tool(['tools/caption.py', f'--checkpoint={folder}', f'--images={images}',
            f'--output={tmp_path / "captions.jsonl"}'])
  lines = [json.loads(line) for line in (tmp_path / 'captions.jsonl').read_text().splitlines()]
  assert len(lines) == 1 and lines[0]['image'].endswith('grey.png')


@pytest.fixture(scope='module')
def equal_norm_model(checkpoint, tmp_path_factory):
  """(transformers folder, state dict) of the checkpoint's model with every head's QK-norm equal,
  as Meta's files (one vector per shard) can hold it."""
  model = copy.deepcopy(checkpoint[1])
  with torch.no_grad():
    for name, p in model.named_parameters():
      if '_norm.' in name and 'self_attn' in name:
        p.copy_(p[:1].expand_as(p))
  folder = tmp_path_factory.mktemp('equal_norms')
  model.save_pretrained(str(folder))
  return str(folder), {k: v for k, v in model.state_dict().items() if 'vqmodel' not in k}


def _meta_tokenizer_folder(source, release):
  """Meta's tokenizer/ of the fixture's checkpoint: its VQ-GAN files, and its tokenizer file with
  Meta's name for the image placeholder."""
  shutil.copytree(source / 'tokenizer', release / 'tokenizer')
  chameleon_files.write_tokenizer(str(release / 'tokenizer' / 'text_tokenizer.json'), CODES)


@pytest.mark.parametrize('shards', [1, 2])
def test_metas_release_layout_loads_to_the_same_parameters_bit_for_bit(equal_norm_model, shards,
                                                                     tmp_path):
  folder, state = equal_norm_model
  chameleon_files.write_meta_model(str(tmp_path / 'models' / 'tiny'), state, heads=4, kv_heads=2,
                                   shards=shards, layers=2, norm_eps=1e-6, rope_theta=500.0)
  names = sorted(p.name for p in (tmp_path / 'models' / 'tiny').iterdir())
  assert len(names) == shards + 1  # consolidated.pth, or .00.pth and .01.pth; params.json
  config, params = load_meta_chameleon(str(tmp_path / 'models' / 'tiny'), dtype='float32')
  want_config, want = interop.load_chameleon(folder, dtype='float32')
  assert config == want_config.replace(max_length=4096)
  flat, want_flat = (traverse_util.flatten_dict(p, sep='/') for p in (params, want))
  assert flat.keys() == want_flat.keys()
  for path in flat:
    np.testing.assert_array_equal(flat[path], want_flat[path], err_msg=path)


def test_pretrained_loads_metas_release_folder_as_its_transformers_twin(checkpoint,
                                                                       equal_norm_model, tmp_path):
  source, _, _, _ = checkpoint
  folder, state = equal_norm_model
  shutil.copy(source / 'tokenizer.json', folder)  # The twin's tokenizer files, as released.
  shutil.copytree(source / 'tokenizer', os.path.join(folder, 'tokenizer'))
  release = tmp_path / 'release'
  chameleon_files.write_meta_model(str(release / 'models' / '7b'), state, heads=4, kv_heads=2,
                                   shards=2, layers=2, norm_eps=1e-6, rope_theta=500.0)
  _meta_tokenizer_folder(source, release)
  twin = Pretrained.load(folder, dtype='float32')
  for path in (release, release / 'models' / '7b'):
    meta = Pretrained.load(str(path), dtype='float32')
    flat, want = (traverse_util.flatten_dict(p.params, sep='/') for p in (meta, twin))
    assert flat.keys() == want.keys()
    for name in flat:
      np.testing.assert_array_equal(flat[name], want[name], err_msg=name)
    assert meta.vocab.encode(CAPTION) == twin.vocab.encode(CAPTION)
    assert os.path.samefile(meta.image_tokenizer_path, release / 'tokenizer')
    np.testing.assert_array_equal(generation.text_to_image(meta, [CAPTION], GREEDY)[1],
                                  generation.text_to_image(twin, [CAPTION], GREEDY)[1])
  # Exported, Meta's release becomes its transformers twin: the decoder's tensors, and the
  # tokenizer file and vocabulary_map with <reserved08707> named <image>.
  exported = export_model(meta, str(tmp_path / 'exported'))
  loaded = ChameleonForConditionalGeneration.from_pretrained(exported).state_dict()
  for name, tensor in state.items():
    assert torch.equal(loaded[name], tensor), name
  with open(os.path.join(exported, 'config.json')) as f:
    assert json.load(f)['vocabulary_map'] == checkpoint[3]
  assert tokenizers.Tokenizer.from_file(os.path.join(exported, 'tokenizer.json')).get_vocab(
      with_added_tokens=True) == checkpoint[3]


def test_conversion_of_metas_release_loads_in_transformers_unchanged(checkpoint,
                                                                     equal_norm_model, tmp_path):
  source, _, vqgan, names = checkpoint
  _, state = equal_norm_model
  release = tmp_path / 'release'
  chameleon_files.write_meta_model(str(release / 'models' / '7b'), state, heads=4, kv_heads=2,
                                   shards=2, layers=2, norm_eps=1e-6, rope_theta=500.0)
  _meta_tokenizer_folder(source, release)
  output = convert_to_transformers(str(release), str(tmp_path / 'hf'), dtype='float32')
  converted, info = ChameleonForConditionalGeneration.from_pretrained(
      output, output_loading_info=True, attn_implementation='eager')
  assert not info['missing_keys'] and not info['unexpected_keys'], info
  loaded = converted.state_dict()
  for name, tensor in state.items():
    assert torch.equal(loaded[name], tensor), name
  encoder_half = {k: v for k, v in vqgan.state_dict().items() if not k.startswith('decoder.')}
  assert 'quantize.embedding.weight' in encoder_half
  for name, tensor in encoder_half.items():
    assert torch.equal(loaded[f'model.vqmodel.{name}'], tensor), name
  # transformers' conversion names <reserved08707> '<image>', in the map and the tokenizer file,
  # as the transformers folder the test wrote has it.
  assert converted.config.vocabulary_map == names and '<image>' in names
  ours = Pretrained.load(output, dtype='float32')  # And it samples here, decoding included.
  images, _ = generation.text_to_image(ours, [CAPTION], GREEDY)
  assert images.shape == (1, 1, 16, 16, 3)


class PickledNote:
  """An object torch.save can only pickle (loading it would run code from the file)."""


def test_a_meta_checkpoint_holding_a_pickled_object_is_refused(tmp_path):
  model_dir = tmp_path / 'models' / '7b'
  model_dir.mkdir(parents=True)
  torch.save({'tok_embeddings.weight': torch.zeros(4, 2), 'note': PickledNote()},
             str(model_dir / 'consolidated.pth'))
  (model_dir / 'params.json').write_text(json.dumps({'n_heads': 1, 'n_layers': 0}))
  with pytest.raises(CheckpointMismatchError, match='objects other than tensors'):
    load_meta_chameleon(str(model_dir))


def test_a_mesh_that_does_not_divide_the_heads_is_named(checkpoint):
  # 4 query heads and 2 KV heads over a tensor axis of 8 devices (conftest forces 8 CPU devices).
  mesh = partitioning.make_mesh(partitioning.MeshConfig(fsdp=1, tensor=8))
  with pytest.raises(partitioning.MeshError,
                     match=r'(?s)does not divide.*query/kernel: dimension 1 of size 4 split over '
                           r"mesh axes \('tensor',\) of 8 devices"):
    Pretrained.load(str(checkpoint[0]), mesh=mesh)


def test_a_vocabulary_map_missing_image_names_is_named(checkpoint, tmp_path):
  folder = tmp_path / 'folder'
  shutil.copytree(checkpoint[0], folder)
  config = json.loads((folder / 'config.json').read_text())
  config['vocabulary_map'] = {k: v for k, v in config['vocabulary_map'].items()
                              if k != 'IMGIMGBCZ'}
  (folder / 'config.json').write_text(json.dumps(config))
  with pytest.raises(ChameleonVocabularyError, match="vocabulary_map lacks 1 image token.*"
                                                     "'IMGIMGBCZ'"):
    Pretrained.load(str(folder))


def test_a_vq_gan_whose_codebook_differs_from_the_vocabulary_is_named(checkpoint, tmp_path,
                                                                      shared_tokenizers):
  folder = tmp_path / 'folder'
  shutil.copytree(checkpoint[0], folder)
  config = json.loads((folder / 'config.json').read_text())
  config['vq_config']['num_embeddings'] = 2 * CODES
  (folder / 'config.json').write_text(json.dumps(config))
  with pytest.raises(ChameleonVocabularyError, match=f'codebook has {2 * CODES} codes'):
    Pretrained.load(str(folder))
  # An image tokenizer given in place of the checkpoint's: the test tokenizer has 64 codes.
  model = Pretrained.load(str(checkpoint[0]), image_tokenizer=shared_tokenizers[1])
  with pytest.raises(PretrainedError, match=f'codebook of 64 codes but .* has {CODES} image'):
    model.image_tokenizer  # pylint: disable=pointless-statement


def test_a_folder_without_its_tokenizer_is_named(checkpoint, tmp_path):
  folder = checkpoint[0]
  bare = tmp_path / 'bare'
  bare.mkdir()
  for name in ('config.json', 'model.safetensors'):
    (bare / name).write_bytes((folder / name).read_bytes())
  with pytest.raises(ChameleonFolderError, match='without its tokenizer.json'):
    Pretrained.load(str(bare))
