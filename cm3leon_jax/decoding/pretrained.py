"""A trained model as samplers need it: decoder, parameters, vocabulary and image tokenizer.

A training run writes ``<model_dir>/model.json`` (and a copy of the text vocabulary) when it
starts, so that its folder alone is enough to sample from::

  model.json   {"model_config": {...DecoderConfig...},
                "vocabulary": {"text_vocabulary": "text_vocabulary.model", "num_image_codes": ...,
                               "num_sentinels": ..., "pad_to_multiple": ...},
                "image_tokenizer": "/path/to/tokenizer" or null,
                "cm3": {...CM3Config of the training task...},
                "loss_on": "all" | "outputs"}  (instruction documents' layout, see data/assembly)

``Pretrained.load(model_dir)`` restores the newest checkpoint's parameters (not the optimizer).
It also loads folders written by ``export.export_model``, whose model.json adds
``"weights": {"format": "cm3leon" | "chameleon", "dtype": ...}`` (transformers' OPT or Chameleon
layout beside it) and names the image tokenizer relative to the folder, and Chameleon-family
checkpoints as released in transformers' layout (``decoding/chameleon_folder.py``).
"""

import dataclasses
import json
import os
import shutil
from typing import Any, Dict, Optional

from absl import logging
import flax.linen as nn
from flax import traverse_util
import jax
import numpy as np
from jax.sharding import Mesh

from cm3leon_jax import partitioning
from cm3leon_jax.training import checkpoints
from cm3leon_jax.data import objective
from cm3leon_jax.decoding import chameleon_folder
from cm3leon_jax.interop import hf_chameleon, hf_opt
from cm3leon_jax.interop.layers_tree import unstack_layers
from cm3leon_jax.models.config import DecoderConfig
from cm3leon_jax.models.decoder import Decoder, init_params
from cm3leon_jax.tokenizers.multimodal import MultimodalVocabulary

MODEL_FILE = 'model.json'

# Exported weights: model family -> (loader, saver) of its transformers layout.
WEIGHT_FORMATS = {'cm3leon': (hf_opt.load_opt, hf_opt.save_opt),
                  'chameleon': (hf_chameleon.load_chameleon, hf_chameleon.save_chameleon)}


class PretrainedError(ValueError):
  """A folder that cannot be sampled from; the message names what is missing and the fix."""


def text_vocabulary_path(vocab: MultimodalVocabulary) -> str:
  """The file behind the text part of `vocab` (SentencePiece .model or tokenizers .json)."""
  text = vocab.text_vocabulary
  path = getattr(text, 'sentencepiece_model_file', None) or getattr(text, 'path', None)
  if not path:
    raise PretrainedError(f'Cannot tell which file the text vocabulary {text!r} came from.')
  return path


def write_model_files(model_dir: str, model_config: DecoderConfig, vocab: MultimodalVocabulary,
                      image_tokenizer: Optional[str], cm3: objective.CM3Config,
                      weights: Optional[Dict[str, str]] = None, loss_on: str = 'all') -> str:
  """Write model.json and the text vocabulary into `model_dir`; returns model.json's path.

  `weights` describes exported weights beside model.json; None means the run's checkpoints.
  `loss_on` is the training task's AssemblyConfig.loss_on: with 'outputs' an instruction
  document's outputs came after its prompt, which decoding the instruction tasks follows.
  """
  os.makedirs(model_dir, exist_ok=True)
  source = text_vocabulary_path(vocab)
  name = 'text_vocabulary' + (os.path.splitext(source)[1] or '.model')
  if os.path.abspath(source) != os.path.abspath(os.path.join(model_dir, name)):
    shutil.copyfile(source, os.path.join(model_dir, name))
  spec = {'model_config': dataclasses.asdict(model_config),
          'vocabulary': {'text_vocabulary': name, 'num_image_codes': vocab.num_image_codes,
                         'num_sentinels': len(vocab.special_names) - 4,
                         'vocab_size': vocab.vocab_size},
          'image_tokenizer': image_tokenizer, 'cm3': dataclasses.asdict(cm3), 'loss_on': loss_on}
  if weights:
    spec['weights'] = weights
  path = os.path.join(model_dir, MODEL_FILE)
  with open(path, 'w', encoding='utf-8') as f:
    json.dump(spec, f, indent=2, sort_keys=True)
  return path


def _decoder_config(fields: Dict[str, Any]) -> DecoderConfig:
  tuples = {k: tuple(v) for k, v in fields.items() if isinstance(v, list)}
  return DecoderConfig(**{**fields, **tuples})


@dataclasses.dataclass
class Pretrained:
  """Everything sampling needs, loaded."""

  model: Decoder
  params: Any
  vocab: MultimodalVocabulary
  cm3: objective.CM3Config
  image_tokenizer_path: Optional[str]
  model_dir: str
  _image_tokenizer: Any = None
  loss_on: str = 'all'  # The layout of instruction documents in training (see write_model_files).

  @classmethod
  def load(cls, model_dir: str, image_tokenizer: Optional[str] = None,
           unroll_layers: bool = True, mesh: Optional[Mesh] = None,
           dtype: str = 'bfloat16') -> 'Pretrained':
    """The newest checkpoint of a training run, or an exported model folder.

    Args:
      model_dir: the run's MODEL_DIR, or a folder written by export.export_model.
      image_tokenizer: an ImageTokenizer folder overriding the one model.json names.
      unroll_layers: give a model trained with scan_layers its blocks unrolled (`layers_{i}`):
        one decoding step then reads each layer's weights in place instead of slicing them out
        of the stacked arrays, which is faster (tools/benchmark.py generate
        --generate_scan_layers). False keeps the stored layout (export does).
      mesh: lay the parameters out over this device mesh by their logical axes (fsdp, tensor),
        as training does; a checkpoint is restored straight into that layout. Decoding then runs
        sharded. None: everything on this process's first device.
      dtype: a Chameleon folder's parameter and compute dtype (its weights are bf16; float32
        for exact comparisons). Runs and exported folders keep the dtypes they were saved with.
    """
    spec_path = os.path.join(model_dir, MODEL_FILE)
    if not os.path.exists(spec_path) and chameleon_folder.is_chameleon_folder(model_dir):
      return cls._load_chameleon(model_dir, image_tokenizer, unroll_layers, mesh, dtype)
    if not os.path.exists(spec_path):
      raise PretrainedError(f'{model_dir} has no {MODEL_FILE}: it is neither a training run folder '
                            'of this version (python -m cm3leon_jax.train writes it), an '
                            'exported model (tools/export.py) nor a Chameleon checkpoint in '
                            'transformers\' or Meta\'s layout.')
    with open(spec_path, encoding='utf-8') as f:
      spec = json.load(f)
    stored = _decoder_config(spec['model_config'])
    config = stored.replace(scan_layers=False) if unroll_layers else stored
    model = Decoder(config)
    placement = _placement(model, mesh)
    if 'weights' in spec:  # The loader lays the parameters out for `config` directly.
      params = jax.device_put(_exported_params(model_dir, config, spec['weights']), placement)
    elif config.scan_layers != stored.scan_layers:
      params = unstack_layers(_checkpoint_params(model_dir, Decoder(stored),
                                                 _placement(Decoder(stored), mesh)),
                              config.num_layers)
      params = jax.device_put(params, placement)
    else:
      params = _checkpoint_params(model_dir, model, placement)
    vocab = _vocabulary(model_dir, spec['vocabulary'])
    cm3 = objective.CM3Config(**spec.get('cm3', {}))
    named = spec.get('image_tokenizer')
    if named and not os.path.isabs(named):
      named = os.path.join(model_dir, named)
    return cls(model, params, vocab, cm3, image_tokenizer or named, model_dir,
               loss_on=spec.get('loss_on', 'all'))

  @classmethod
  def _load_chameleon(cls, folder: str, image_tokenizer: Optional[str], unroll_layers: bool,
                      mesh: Optional[Mesh], dtype: str) -> 'Pretrained':
    """A Chameleon-family folder in transformers' or Meta's layout (see chameleon_folder). With
    unrolled layers each tensor goes to its devices as soon as it is read: the host never holds
    the whole model."""
    overrides = dict(dtype=dtype, param_dtype=dtype)
    if unroll_layers:
      overrides['scan_layers'] = False
    config = chameleon_folder.decoder_config(folder, **overrides)
    model = Decoder(config)
    placement = _placement(model, mesh)
    _log_memory(model, placement)
    params, vocab, image_folder = chameleon_folder.load(folder, config, _placer(placement))
    if config.scan_layers:
      params = jax.device_put(params, placement)
    return cls(model, params, vocab, objective.CM3Config(), image_tokenizer or image_folder,
               folder)

  @property
  def image_tokenizer(self):
    """The ImageTokenizer (loaded on first use); PretrainedError when the run names none."""
    if self._image_tokenizer is None:
      path = self.image_tokenizer_path
      if not path or not os.path.exists(path):
        raise PretrainedError(
            f'{self.model_dir} names no image tokenizer that exists ({path!r}); images cannot be '
            'encoded or decoded. Give the tokenizer folder (e.g. --image_tokenizer=...: one '
            'saved here, or Meta\'s vqgan.ckpt + vqgan.yaml).')
      tokenizer = chameleon_folder.load_image_tokenizer(path)
      if tokenizer.config.n_embed != self.vocab.num_image_codes:
        raise PretrainedError(
            f'The image tokenizer {path} has a codebook of {tokenizer.config.n_embed} codes but '
            f'the vocabulary of {self.model_dir} has {self.vocab.num_image_codes} image tokens; '
            'give the tokenizer the model was trained with.')
      self._image_tokenizer = tokenizer
    return self._image_tokenizer

  @property
  def tokens_per_image(self) -> int:
    config = self.image_tokenizer.config
    return (config.resolution // config.downsample_factor) ** 2

  def encode_images(self, pixels: np.ndarray) -> np.ndarray:
    """Image token ids [B, N] of images [B, H, W, 3] (uint8, or float in [-1, 1]) at the
    tokenizer's resolution."""
    codes = np.asarray(self.image_tokenizer.encode(pixels)).reshape(len(pixels), -1)
    return self.vocab.image_ids(codes)

  def decode_images(self, image_ids: np.ndarray) -> np.ndarray:
    """uint8 images [B, H, W, 3] of image token ids [B, N]."""
    from cm3leon_jax.data.images import postprocess  # pylint: disable=g-import-not-at-top
    codes = self.vocab.image_codes(np.asarray(image_ids))
    side = int(round(codes.shape[1] ** 0.5))
    return postprocess(np.asarray(self.image_tokenizer.decode(codes.reshape(-1, side, side))))


def _placement(model: Decoder, mesh: Optional[Mesh]):
  """Each parameter's sharding: by its logical axes over `mesh`, else this process's first
  device (in a multi-process run, jax.devices()[0] may belong to another process)."""
  if mesh is None:
    return jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  boxed = jax.eval_shape(lambda: init_params(model, jax.random.key(0)))
  shardings = partitioning.logical_shardings(boxed, mesh)
  partitioning.check_divisible(nn.meta.unbox(boxed), shardings)
  return shardings


def _placer(placement):
  """place(path, array) putting each parameter on its devices (see mapping.load)."""
  if isinstance(placement, jax.sharding.Sharding):
    return lambda path, x: jax.device_put(x, placement)
  by_path = traverse_util.flatten_dict(placement, sep='/')
  return lambda path, x: jax.device_put(x, by_path[path])


def _log_memory(model: Decoder, placement) -> None:
  """Say, before any weight is read, how much memory the parameters take on each device."""
  shapes = jax.eval_shape(lambda: nn.meta.unbox(init_params(model, jax.random.key(0))))
  shardings = (jax.tree.map(lambda _: placement, shapes)
               if isinstance(placement, jax.sharding.Sharding) else placement)
  logging.info('Loading the parameters: %s.', partitioning.parameter_report(shapes, shardings))


def _checkpoint_params(model_dir: str, model: Decoder, placement):
  """The newest training checkpoint's parameters, restored into `placement`."""
  shapes = jax.eval_shape(lambda: nn.meta.unbox(init_params(model, jax.random.key(0))))
  if isinstance(placement, jax.sharding.Sharding):
    placement = jax.tree.map(lambda _: placement, shapes)
  abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          shapes, placement)
  return checkpoints.load_params(model_dir, abstract)


def _exported_params(model_dir: str, config: DecoderConfig, weights: Dict[str, str]):
  """Parameters of an exported folder, read from its transformers-layout safetensors."""
  if weights.get('format') not in WEIGHT_FORMATS:
    raise PretrainedError(f'{model_dir}/{MODEL_FILE} names weights of format '
                          f'{weights.get("format")!r}; this version reads '
                          f'{sorted(WEIGHT_FORMATS)}.')
  load, _ = WEIGHT_FORMATS[weights['format']]
  try:
    _, params = load(model_dir, config)
  except FileNotFoundError as e:
    raise PretrainedError(f'{model_dir} is an exported model without its weights: {e}') from e
  return params


def _vocabulary(model_dir: str, spec: Dict[str, Any]) -> MultimodalVocabulary:
  from cm3leon_jax.data.store import text_vocabulary  # pylint: disable=g-import-not-at-top
  path = os.path.join(model_dir, spec['text_vocabulary'])
  if not os.path.exists(path):
    raise PretrainedError(f'{model_dir} lacks its text vocabulary {spec["text_vocabulary"]}.')
  vocab = MultimodalVocabulary(text_vocabulary(path), spec['num_image_codes'],
                               spec['num_sentinels'])
  if vocab.vocab_size != spec['vocab_size']:
    raise PretrainedError(f'{path} gives {vocab.vocab_size} ids, but the run trained with '
                          f'{spec["vocab_size"]}; the vocabulary file was changed.')
  return vocab
