"""The paper's generation tasks on top of ``decoding.generate`` (CM3Leon, arXiv 2309.02591,
sections 3 and 4).

  text_to_image   ``[retrieved docs <eos>] caption <break>`` -> N image codes (CFG, CD-K, top-p)
  unconditional_images  ``<mask> <break>`` -> N image codes (the caption masked, no guidance)
  caption         ``<sentinel:0> <break> image <infill> <sentinel:0>`` -> caption text <eoss>
  answer          ``image <break> question`` -> text (VQA-style prompts)
  infill          ``body with a span masked <infill> <sentinel:0>`` -> that span, text or image
  continue_document  an interleaved document -> what follows, text and whole images
  rerank          order n samples of a prompt by CLIP similarity to its caption

Each task fills in the decoding settings it needs (modality control, number of new tokens, stop
tokens) on top of the caller's ``DecodingConfig`` (temperature, top-p, guidance, CD-K, seed).
"""

import dataclasses
import functools
from typing import List, Optional, Sequence, Tuple

import numpy as np

from cm3leon_jax.data import objective
from cm3leon_jax.decoding import DecodingConfig, DecodingError, generate
from cm3leon_jax.decoding.pretrained import Pretrained
from cm3leon_jax.tokenizers.multimodal import Segment

# The image settings of Chameleon's inference code (facebookresearch/chameleon, Options.Image):
# in-batch guidance with text scale 3 and image scale 1.2, temperature 0.7, top-p 0.9.
CHAMELEON_IMAGE_DECODING = DecodingConfig(temperature=0.7, top_p=0.9, guidance_scale=3.0,
                                          image_guidance_scale=1.2)


def _tokens(pretrained: Pretrained):
  return objective.CM3Tokens.from_vocabulary(pretrained.vocab)


def mask_token(pretrained: Pretrained) -> Optional[int]:
  """The token that stands for masked text in the unconditional stream: what the CM3 objective the
  model trained with put in place of a masked span (<sentinel:0> or <mask>); None for a vocabulary
  whose guidance drops the text instead (Chameleon's)."""
  if pretrained.vocab.guidance_style == 'drop':
    return None
  if pretrained.cm3.sentinel_style == 'mask':
    return pretrained.vocab.mask_id
  return pretrained.vocab.sentinel_id(0)


def text_to_image(pretrained: Pretrained, captions: Sequence[str], config: DecodingConfig,
                  prefixes: Optional[Sequence[Sequence[int]]] = None
                  ) -> Tuple[np.ndarray, np.ndarray]:
  """Images for captions: (uint8 images [P, num_decodes, H, W, 3], image ids [P, num_decodes, N]).

  Args:
    pretrained: the model, vocabulary and image tokenizer.
    captions: one text per prompt (not empty).
    config: sampling settings; guidance_scale turns classifier-free guidance on.
    prefixes: token ids to put before each prompt, e.g. ``Retriever.prefix_tokens`` of its
      retrieved documents.
  """
  vocab = pretrained.vocab
  prompts = []
  for i, caption in enumerate(captions):
    if not caption or not caption.strip():
      raise DecodingError(f'Caption {i} is empty; text-to-image needs a caption.')
    prefix = list(prefixes[i]) if prefixes is not None else []
    prompts.append(list(vocab.sequence_start_ids) + prefix +
                   list(vocab.text_vocabulary.encode(caption)) + [vocab.image_open_id])
  return images_after(pretrained, prompts, config)


def unconditional_images(pretrained: Pretrained, count: int, config: DecodingConfig
                         ) -> Tuple[np.ndarray, np.ndarray]:
  """Images drawn with the caption masked, ``<mask> <break>`` (the prompt of guidance's
  unconditional stream; Chameleon's is ``<s> <racm3:break>``), without guidance: (uint8 images
  [count, H, W, 3], ids [count, N]). The baseline a text-to-image metric should beat: what the
  model draws knowing no caption."""
  vocab = pretrained.vocab
  if vocab.guidance_style == 'drop':
    prompt = list(vocab.sequence_start_ids) + [vocab.image_open_id]
  else:
    prompt = [mask_token(pretrained), vocab.break_id]
  config = dataclasses.replace(config, num_decodes=count, guidance_scale=None,
                               image_guidance_scale=None, cd_k_fraction=0.0)
  images, ids = images_after(pretrained, [prompt], config)
  return images[0], ids[0]


def images_after(pretrained: Pretrained, prompts, config: DecodingConfig):
  """N image codes after each prompt, decoded: (images [P, num_decodes, ...], ids)."""
  vocab = pretrained.vocab
  n = pretrained.tokens_per_image
  config = dataclasses.replace(config, max_new_tokens=n, tokens_per_image=n, generate_images=True,
                               image_open_id=None, image_close_id=None, stop_ids=(),
                               uncond_mask_id=mask_token(pretrained))
  samples = generate(pretrained.model, pretrained.params, prompts, config, vocab)
  ids = samples.tokens[..., :n]
  images = pretrained.decode_images(ids.reshape(-1, n))
  return images.reshape(ids.shape[:2] + images.shape[1:]), ids


def text_config(pretrained: Pretrained, config: DecodingConfig,
                max_new_tokens: int) -> DecodingConfig:
  """`config` set to decode text: up to `max_new_tokens`, stopping at the end tokens."""
  vocab = pretrained.vocab
  stops = (vocab.eoss_id, vocab.eos_id)
  if vocab.guidance_style == 'drop':  # Chameleon's inference code also ends text at an image.
    stops += (vocab.image_open_id,)
  return dataclasses.replace(
      config, max_new_tokens=max_new_tokens, tokens_per_image=pretrained.tokens_per_image,
      generate_images=False, stop_ids=stops, pad_id=vocab.eos_id,
      uncond_mask_id=mask_token(pretrained))


def _image_prompt(vocab, image_ids) -> List[int]:
  """An image as a prompt in Chameleon's layout: <s> <racm3:break> codes <eoss>."""
  return (list(vocab.sequence_start_ids) + [vocab.image_open_id] + list(image_ids) +
          [vocab.image_close_id])


def texts(pretrained: Pretrained, tokens: np.ndarray) -> List[List[str]]:
  """Decoded text of each sample, cut at its first non-text token."""
  vocab = pretrained.vocab
  out = []
  for row in tokens:
    texts = []
    for sample in row:
      stop = np.flatnonzero(~vocab.is_text(sample))
      texts.append(vocab.text_vocabulary.decode(sample[:stop[0] if stop.size else None].tolist()))
    out.append(texts)
  return out


def caption(pretrained: Pretrained, image_ids: np.ndarray, config: DecodingConfig,
            max_new_tokens: int = 32) -> List[List[str]]:
  """Captions [P][num_decodes] of images given as image token ids [P, N], by CM3 infilling (a
  Chameleon-family model: the text that follows the image)."""
  prompts = [_caption_prompt(pretrained, ids) for ids in np.asarray(image_ids)]
  samples = generate(pretrained.model, pretrained.params, prompts,
                     text_config(pretrained, config, max_new_tokens), pretrained.vocab)
  return texts(pretrained, samples.tokens)


def _caption_prompt(pretrained: Pretrained, ids: np.ndarray) -> List[int]:
  vocab = pretrained.vocab
  if vocab.guidance_style == 'drop':
    return _image_prompt(vocab, ids.tolist())
  # A placeholder caption of one text token: the span infilling_prompt masks away.
  placeholder = vocab.text_vocabulary.encode('a')[:1]
  document = np.concatenate([placeholder, [vocab.break_id], ids])
  return list(objective.infilling_prompt(document, (0, 1), _tokens(pretrained), pretrained.cm3))


def answer(pretrained: Pretrained, image_ids: np.ndarray, questions: Sequence[str],
           config: DecodingConfig, max_new_tokens: int = 16) -> List[List[str]]:
  """Text continuations of ``image <break> question`` prompts (VQA-style; for a Chameleon-family
  model ``<s> <racm3:break> image <eoss> question``), [P][num_decodes]."""
  vocab = pretrained.vocab
  image = (functools.partial(_image_prompt, vocab) if vocab.guidance_style == 'drop'
           else lambda ids: list(ids) + [vocab.break_id])
  prompts = [image(ids) + list(vocab.text_vocabulary.encode(question))
             for ids, question in zip(np.asarray(image_ids).tolist(), questions)]
  samples = generate(pretrained.model, pretrained.params, prompts,
                     text_config(pretrained, config, max_new_tokens), vocab)
  return texts(pretrained, samples.tokens)


def infill(pretrained: Pretrained, document: Sequence[int], span: Tuple[int, int],
           config: DecodingConfig, max_text_tokens: int = 32) -> np.ndarray:
  """New tokens for ``document[start:end]`` (a text run or a whole image), [num_decodes, T].

  An image span gets exactly N image codes; a text span gets text until <eoss>.
  """
  document = np.asarray(document, np.int32)
  prompt = objective.infilling_prompt(document, span, _tokens(pretrained), pretrained.cm3)
  vocab = pretrained.vocab
  if vocab.is_image(document[span[0]:span[1]]).any():
    n = pretrained.tokens_per_image
    sentinel = int(prompt[-1])
    config = dataclasses.replace(config, max_new_tokens=n, tokens_per_image=n,
                                 generate_images=True, image_open_id=sentinel,
                                 image_close_id=vocab.eoss_id, stop_ids=(),
                                 uncond_mask_id=mask_token(pretrained))
  else:
    config = text_config(pretrained, config, max_text_tokens)
  samples = generate(pretrained.model, pretrained.params, [prompt], config, vocab)
  return samples.tokens[0]


def continue_document(pretrained: Pretrained, documents: Sequence[Sequence[Segment]],
                      config: DecodingConfig, max_new_tokens: int = 64
                      ) -> List[List[List[Segment]]]:
  """What follows interleaved documents, text and images as the model chooses: segments
  [P][num_decodes][...] (``Text``, and ``Image`` of its codes: ``pretrained.decode_images(
  vocab.image_ids([image.codes]))`` gives its pixels).

  Each prompt is the document in the vocabulary's layout (Chameleon's: ``<s> text <racm3:break>
  image <eoss> text``). A sample may open an image, which then holds exactly N codes; it ends at
  the end token or after `max_new_tokens`, and an image that the limit cuts short is left out.
  """
  vocab = pretrained.vocab
  prompts = [list(vocab.sequence_start_ids) + vocab.encode_document(segments)
             for segments in documents]
  n = pretrained.tokens_per_image
  config = dataclasses.replace(
      config, max_new_tokens=max_new_tokens, tokens_per_image=n, generate_images=True,
      image_open_id=None, image_close_id=None, stop_ids=(vocab.eos_id,), pad_id=vocab.eos_id,
      uncond_mask_id=mask_token(pretrained))
  samples = generate(pretrained.model, pretrained.params, prompts, config, vocab)
  return [[vocab.decode_document(_whole_images(vocab, tokens[:count]))
           for tokens, count in zip(row, counts)]
          for row, counts in zip(samples.tokens, samples.num_tokens)]


def _whole_images(vocab, tokens: np.ndarray) -> List[int]:
  """`tokens` without their end token and without an image still open at their end (with the
  token that opened it): every image left is whole."""
  tokens = tokens.tolist()
  if tokens and tokens[-1] == vocab.eos_id:
    tokens = tokens[:-1]
  end = len(tokens)
  while end and vocab.is_image(tokens[end - 1]):
    end -= 1
  if end < len(tokens):  # The sample stopped inside an image: drop it and its open token.
    return tokens[:end - 1] if end and tokens[end - 1] == vocab.image_open_id else tokens[:end]
  return tokens


def rerank(encoder, images: np.ndarray, caption_text: str) -> np.ndarray:
  """Indices of `images` (uint8 [n, H, W, 3], samples of one prompt) by decreasing CLIP
  similarity to `caption_text` (the paper keeps the best of 8)."""
  image_embeddings = encoder.embed_images(list(images))
  text_embedding = encoder.embed_texts([caption_text])[0]
  return np.argsort(-(image_embeddings @ text_embedding), kind='stable')
