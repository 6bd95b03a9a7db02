"""The sampler of the zero-shot FID protocol: a caption's `num_decodes` samples (guided, optionally
after retrieved documents), of which the one CLIP finds closest to the caption is kept."""

import dataclasses
from typing import List, Optional, Sequence

import numpy as np

from cm3leon_jax.decoding import DecodingConfig, generation
from cm3leon_jax.decoding.pretrained import Pretrained
from cm3leon_jax.evaluation.fid_sources import Prompt

# Shard seeds are spaced by a prime, so neighbouring shards' streams never coincide.
_SHARD_SEED_STRIDE = 1_000_003


class RetrievalOverlapError(ValueError):
  """The memory bank holds an evaluated image: retrieval would show the model the answer."""


class Sampler:
  """(prompts, shard index) -> the kept uint8 image of each prompt [P, H, W, 3]."""

  def __init__(self, pretrained: Pretrained, config: DecodingConfig, rerank_clip: Optional[str],
               retrieval_index: Optional[str] = None, num_retrieved: int = 0,
               batch_prompts: int = 8, evaluated_ids: Sequence[str] = ()):
    """
    Args:
      config: sampling settings; its num_decodes samples are drawn per caption.
      rerank_clip: the CLIP folder that picks the kept sample; None keeps the first.
      retrieval_index: a memory-bank index built on training images (tools/build_index.py).
      num_retrieved: documents put before each caption (0: no retrieval).
      batch_prompts: captions decoded together.
      evaluated_ids: image ids of the evaluated captions, which no retrieved document may share.
    """
    self.pretrained, self.config, self.batch_prompts = pretrained, config, batch_prompts
    self.num_retrieved = num_retrieved
    self.reranker = None
    if rerank_clip and config.num_decodes > 1:
      from cm3leon_jax.tokenizers.document_encoder import DocumentEncoder  # pylint: disable=g-import-not-at-top
      self.reranker = DocumentEncoder(rerank_clip)
    self.retriever = None
    if num_retrieved:
      if not retrieval_index:
        raise ValueError('num_retrieved > 0 needs a retrieval index of the training images.')
      from cm3leon_jax.retrieval.retriever import Retriever  # pylint: disable=g-import-not-at-top
      from cm3leon_jax.retrieval.select import SelectionConfig  # pylint: disable=g-import-not-at-top
      self.retriever = Retriever(retrieval_index, SelectionConfig(k=num_retrieved))
    self.evaluated_ids = frozenset(evaluated_ids)

  @property
  def resolution(self) -> int:
    """The side of the generated images."""
    return self.pretrained.image_tokenizer.config.resolution

  def __call__(self, prompts: Sequence[Prompt], shard: int) -> np.ndarray:
    kept = []
    for start in range(0, len(prompts), self.batch_prompts):
      batch = prompts[start:start + self.batch_prompts]
      config = dataclasses.replace(
          self.config, seed=self.config.seed * _SHARD_SEED_STRIDE + shard * 1000 + start)
      captions = [p.caption for p in batch]
      images, _ = generation.text_to_image(self.pretrained, captions, config,
                                           self._prefixes(captions))
      kept += [row[self._best(row, caption)] for row, caption in zip(images, captions)]
    return np.stack(kept)

  def _best(self, samples: np.ndarray, caption: str) -> int:
    if self.reranker is None:
      return 0
    return int(generation.rerank(self.reranker, samples, caption)[0])

  def _prefixes(self, captions: List[str]):
    if self.retriever is None:
      return None
    from cm3leon_jax.data.assembly import TokenLayout  # pylint: disable=g-import-not-at-top
    documents = self.retriever.retrieve(texts=captions)
    for row in documents:
      for document in row:
        if document.id.split('#')[0] in self.evaluated_ids:
          raise RetrievalOverlapError(
              f'The memory bank holds {document.id}, an evaluated image: build the index on the '
              'training images only (for COCO: train2014, the Karpathy train split).')
    layout = TokenLayout.from_vocabulary(self.pretrained.vocab)
    return [self.retriever.prefix_tokens(row, layout) for row in documents]
