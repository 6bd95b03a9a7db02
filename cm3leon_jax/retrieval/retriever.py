"""Retrieval at inference: a prompt (text, image or both) -> the documents to put in front of it.

  retriever = Retriever('/data/store/train/index')
  documents = retriever.retrieve(texts=['a large red circle'])[0]     # up to k store Documents
  prefix = retriever.prefix_tokens(documents, TokenLayout.from_vocabulary(vocab))

The rules are the training rules of select.py (relevance, near-copy threshold, no duplicates, both
modalities first) without query dropout, and the prefix is laid out as training laid out retrieved
documents: ``doc <eos> doc <eos>``, each ``text <break> image``.
"""

from typing import Dict, List, Optional, Sequence

import numpy as np

from cm3leon_jax.data.assembly import TokenLayout, document_tokens
from cm3leon_jax.data.store import Document, DocumentStore
from cm3leon_jax.retrieval import files
from cm3leon_jax.tokenizers.document_encoder import DocumentEncoder
from cm3leon_jax.retrieval.select import SelectionConfig, select_neighbours

# Prompts have no id in the bank; selection still excludes bank documents equal to the prompt by
# their score (max_score).
_PROMPT_ID = ''


class Retriever:
  """A memory index, its frozen CLIP and its store, loaded once."""

  def __init__(self, index_dir: str, selection: SelectionConfig = SelectionConfig(),
               clip: Optional[str] = None, search_candidates: int = 16, batch_size: int = 64):
    """
    Args:
      index_dir: a folder from tools/build_index.py.
      selection: k, max_score and the modality preference (query_dropout is not used).
      clip: the CLIP folder; default: the one the index was built with.
      search_candidates: candidates searched besides k.
      batch_size: prompts per CLIP call.
    """
    metadata = files.read_metadata(index_dir)
    self.selection = selection
    self.search_candidates = search_candidates
    self.encoder = DocumentEncoder(clip or metadata['clip'], batch_size)
    self.index, self.bank = files.load_index(index_dir, self.encoder.info)
    self.store = DocumentStore(metadata['store_dir'])
    self._documents: Optional[Dict[str, Document]] = None

  def neighbour_ids(self, texts: Optional[Sequence[Optional[str]]] = None,
                    images: Optional[Sequence] = None) -> List[List[str]]:
    """Up to k bank document ids per prompt, most relevant first.

    Args:
      texts: one text per prompt (None or '' for an image-only prompt), or None for no texts.
      images: one image per prompt (PIL or uint8 array; None for a text-only prompt), or None.
    """
    texts, images = _aligned(texts, images)
    image_embeddings = [None] * len(texts)
    present = [i for i, image in enumerate(images) if image is not None]
    if present:
      embedded = self.encoder.embed_images([images[i] for i in present])
      for row, i in enumerate(present):
        image_embeddings[i] = embedded[row]
    queries = self.encoder.documents(texts, image_embeddings)
    ids, scores = self.index.search(queries, self.selection.k + self.search_candidates)
    return [select_neighbours(_PROMPT_ID, row_ids, row_scores, self.bank.has_both,
                              self.bank.fingerprint, self.selection)
            for row_ids, row_scores in zip(ids, scores)]

  def retrieve(self, texts: Optional[Sequence[Optional[str]]] = None,
               images: Optional[Sequence] = None) -> List[List[Document]]:
    """The neighbour documents (tokens and all) of each prompt; see `neighbour_ids`."""
    documents = self._all_documents()
    return [[documents[i] for i in row] for row in self.neighbour_ids(texts, images)]

  def _all_documents(self) -> Dict[str, Document]:
    # The whole bank store is read once, on first use: inference retrieval is meant for stores
    # that fit in memory; training-time retrieval (tools/retrieve.py) joins in Beam instead.
    if self._documents is None:
      self._documents = {d.id: d for d in self.store.documents()}
    return self._documents

  @staticmethod
  def prefix_tokens(documents: Sequence[Document], layout: TokenLayout,
                    image_first: bool = False) -> np.ndarray:
    """Token ids ``doc <eos> doc <eos>`` to put before a prompt (empty for no documents)."""
    pieces = []
    for doc in documents:
      pieces += [document_tokens((doc.text_ids, doc.image_codes), image_first, layout),
                 np.array([layout.eos_id], np.int32)]
    return np.concatenate(pieces).astype(np.int32) if pieces else np.zeros(0, np.int32)


def _aligned(texts, images):
  if texts is None and images is None:
    raise ValueError('Retriever needs texts, images or both (got neither).')
  count = len(texts if texts is not None else images)
  texts = list(texts) if texts is not None else [None] * count
  images = list(images) if images is not None else [None] * count
  if len(texts) != len(images):
    raise ValueError(f'{len(texts)} texts but {len(images)} images; give one of each per prompt '
                     '(None where a prompt lacks one).')
  return texts, images
