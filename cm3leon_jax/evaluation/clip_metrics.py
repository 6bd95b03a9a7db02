"""CLIP as a measuring instrument for generated images: image features for FD-CLIP (the Frechet
distance in CLIP's image-embedding space, Kynkaanniemi et al. 2023) and the CLIP score.

Any CLIP folder the project loads works (transformers' CLIPModel layout: a ViT-B/32 or L/14, or
one written by tools/train_clip.py). FD-CLIP uses the projected image embeddings as CLIP's
``get_image_features`` returns them, before L2 normalisation. The CLIP score of an image and its
caption is 100 * max(cos(image, text), 0), averaged (torchmetrics' definition; Hessel et al.'s
CLIPScore weighs the cosine by 2.5 instead).

The CLIP that measures should not be the one that retrieved or re-ranked the samples: a metric
computed by the re-ranker rewards its own choices.
"""

from typing import Sequence

import numpy as np

from cm3leon_jax.interop import hf_clip
from cm3leon_jax.tokenizers.document_encoder import DocumentEncoder, normalise


class ClipMetrics:
  """One CLIP folder, loaded once."""

  def __init__(self, directory: str, batch_size: int = 64):
    self.directory = directory
    self.encoder = DocumentEncoder(directory, batch_size)

  @property
  def dim(self) -> int:
    """The width of the image features."""
    return self.encoder.config.projection_dim

  def image_features(self, images: np.ndarray) -> np.ndarray:
    """Projected image embeddings [N, dim] (not normalised) of uint8 images [N, H, W, 3]."""
    return self.encoder.embed_pixels(hf_clip.preprocess_images(list(images), self.encoder.config))

  def clip_scores(self, image_features: np.ndarray, captions: Sequence[str]) -> np.ndarray:
    """100 * max(cos, 0) of each image (its ``image_features``) with its caption, [N]."""
    if len(image_features) != len(captions):
      raise ValueError(f'{len(image_features)} images but {len(captions)} captions.')
    if not len(captions):
      return np.zeros((0,), np.float32)
    cosines = np.sum(normalise(image_features) * self.encoder.embed_texts(list(captions)), axis=-1)
    return 100 * np.maximum(cosines, 0)
