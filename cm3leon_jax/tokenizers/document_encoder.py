"""The frozen CLIP retriever's document encoder: texts and images -> unit-norm document embeddings.

A document's embedding is the mean of its L2-normalised text and image embeddings (RA-CM3, arXiv
2211.12561, section 3; CM3Leon, arXiv 2309.02591, section 2.1), re-normalised here so that inner
products are cosines and the memory index accepts the rows. The encoder runs fixed-size padded
batches, so each worker compiles each tower once and a document's embedding does not depend on
which other documents share its batch.
"""

import dataclasses
import hashlib
import os
from typing import Optional, Sequence

import jax
import numpy as np

from cm3leon_jax.interop import hf_clip
from cm3leon_jax.interop.checkpoint_files import read_config
from cm3leon_jax.models.clip_config import from_hf_config_dict
from cm3leon_jax.models.clip import CLIP


@dataclasses.dataclass(frozen=True)
class EncoderInfo:
  """Which encoder made the embeddings; a loaded index must match the encoder of its queries.

  Attributes:
    name: e.g. 'clip-vit-b-32'.
    dim: embedding width.
    fingerprint: a hash of the encoder's config and weights, so a retrained or reconfigured
      encoder of the same name and width is still told apart.
  """
  name: str
  dim: int
  fingerprint: str


def normalise(x: np.ndarray) -> np.ndarray:
  """Rows scaled to unit L2 norm (float32)."""
  x = np.asarray(x, np.float32)
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def fingerprint_files(directory: str, names: Sequence[str]) -> str:
  """A short sha256 of the named files' bytes (weights and config identify an encoder)."""
  digest = hashlib.sha256()
  for name in sorted(names):
    digest.update(name.encode())
    with open(os.path.join(directory, name), 'rb') as f:
      for block in iter(lambda: f.read(1 << 20), b''):
        digest.update(block)
  return digest.hexdigest()[:16]


def encoder_info(directory: str) -> EncoderInfo:
  """The identity of the CLIP in `directory` (name, width, weights fingerprint), unloaded."""
  files = [n for n in os.listdir(directory)
           if n.endswith('.safetensors') or n in ('config.json', 'tokenizer.json')]
  config = from_hf_config_dict(read_config(directory))
  return EncoderInfo(os.path.basename(os.path.normpath(directory)), config.projection_dim,
                     fingerprint_files(directory, files))


class DocumentEncoder:
  """A CLIP checkpoint directory (transformers `CLIPModel` layout) loaded once, jitted."""

  def __init__(self, directory: str, batch_size: int = 64):
    """
    Args:
      directory: config.json, *.safetensors and tokenizer.json of a CLIP (e.g. from
        tools/train_clip.py, or an OpenAI CLIP saved by transformers).
      batch_size: rows per compiled call; shorter batches are padded to it.
    """
    self.directory = directory
    self.batch_size = batch_size
    self.config, self._params = hf_clip.load_clip(directory)
    self.tokenizer = hf_clip.ClipTextTokenizer(directory)
    model = CLIP(self.config)
    # Parameters are arguments, not constants that XLA would fold into the program.
    self._image = jax.jit(lambda p, x: model.apply({'params': p}, x, method=CLIP.encode_image))
    self._text = jax.jit(lambda p, i, m: model.apply({'params': p}, i, m,
                                                     method=CLIP.encode_text))

  @property
  def info(self) -> EncoderInfo:
    """The encoder's identity, saved with an index and checked when the index is loaded."""
    return encoder_info(self.directory)

  def _batched(self, function, *arrays) -> np.ndarray:
    """`function(params, *chunks)` over padded batches of `arrays`' rows; float32 [N, dim]."""
    rows = len(arrays[0])
    out = []
    for start in range(0, rows, self.batch_size):
      chunks = [a[start:start + self.batch_size] for a in arrays]
      pad = self.batch_size - len(chunks[0])
      chunks = [np.concatenate([c, np.repeat(c[-1:], pad, axis=0)]) for c in chunks]
      out.append(np.asarray(function(self._params, *chunks))[:self.batch_size - pad])
    dim = self.config.projection_dim
    return np.concatenate(out) if out else np.zeros((0, dim), np.float32)

  def embed_images(self, images: Sequence) -> np.ndarray:
    """Unit-norm image embeddings [N, dim] of PIL images or uint8 arrays."""
    return normalise(self.embed_pixels(hf_clip.preprocess_images(images, self.config)))

  def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
    """Raw image embeddings [N, dim] of pixels already through `hf_clip.preprocess_images`."""
    return self._batched(self._image, np.asarray(pixels, np.float32))

  def embed_texts(self, texts: Sequence[str], dropout: float = 0.0,
                  seeds: Optional[Sequence[int]] = None) -> np.ndarray:
    """Unit-norm text embeddings [N, dim]; with `dropout`, that share of each text's word-piece
    tokens (never its begin and end tokens) is dropped first, seeded by `seeds[i]`."""
    ids, mask = self.tokenizer(texts)
    if dropout:
      if seeds is None or len(seeds) != len(texts):
        raise ValueError('Query dropout needs one seed per text.')
      ids, mask = self._drop_tokens(ids, mask, dropout, seeds)
    return normalise(self._batched(self._text, ids, mask))

  def _drop_tokens(self, ids, mask, rate, seeds):
    dropped_ids = np.full_like(ids, self.tokenizer.pad_id)
    dropped_mask = np.zeros_like(mask)
    for row, (tokens, seed) in enumerate(zip(ids, seeds)):
      tokens = tokens[mask[row].astype(bool)]
      inner = query_dropout(tokens[1:-1], rate, seed) if len(tokens) > 2 else tokens[1:-1]
      kept = np.concatenate([tokens[:1], inner, tokens[-1:]])
      dropped_ids[row, :len(kept)] = kept
      dropped_mask[row, :len(kept)] = 1
    return dropped_ids, dropped_mask

  def documents(self, texts: Sequence[Optional[str]],
                image_embeddings: Sequence[Optional[np.ndarray]], dropout: float = 0.0,
                seeds: Optional[Sequence[int]] = None) -> np.ndarray:
    """Unit-norm document embeddings [N, dim]: `models.clip.document_embedding` of each text
    (None or '': no text) and image embedding (None: no image), re-normalised.

    Each document needs at least one of the two. `dropout` and `seeds` are query dropout for the
    texts (see `embed_texts`).
    """
    dim = self.config.projection_dim
    has_text = np.array([bool(t) for t in texts], bool)
    has_image = np.array([e is not None for e in image_embeddings], bool)
    if len(has_text) != len(has_image):
      raise ValueError(f'{len(has_text)} texts but {len(has_image)} image embeddings.')
    if not (has_text | has_image).all():
      raise ValueError(f'Documents {np.flatnonzero(~(has_text | has_image)).tolist()} have '
                       'neither text nor an image embedding.')
    text_rows = np.zeros((len(texts), dim), np.float32)
    if has_text.any():
      chosen = np.flatnonzero(has_text)
      text_rows[chosen] = self.embed_texts(
          [texts[i] for i in chosen], dropout,
          None if seeds is None else [seeds[i] for i in chosen])
    image_rows = np.zeros((len(texts), dim), np.float32)
    if has_image.any():
      image_rows[has_image] = normalise(np.stack([e for e in image_embeddings if e is not None]))
    total = text_rows + image_rows  # Rows are zero where a modality is missing.
    return normalise(total / (has_text.astype(np.float32) + has_image)[:, None])


def query_dropout(tokens, rate: float, rng: int | np.random.Generator):
  """`tokens` with round(rate * len) of them removed at random (order kept; at least one kept).

  Args:
    tokens: the query's tokens (a list or a 1-D array; the same kind comes back).
    rate: fraction to drop, in [0, 1).
    rng: a seed or a numpy Generator, so dropout is reproducible.
  """
  if not 0.0 <= rate < 1.0:
    raise ValueError(f'query dropout rate must be in [0, 1); got {rate}.')
  array = np.asarray(tokens)
  n = array.shape[0]
  drop = min(round(rate * n), max(n - 1, 0))
  rng = np.random.default_rng(rng)
  keep = np.sort(rng.choice(n, size=n - drop, replace=False))
  kept = array[keep]
  return kept if isinstance(tokens, np.ndarray) else kept.tolist()
