"""Images drawn from validation captions while training: a grid for TensorBoard and PNG.

The captions are the first documents of the task's evaluation split; the image tokenizer is the
one its store names. Sampling uses top-p 0.9 with classifier-free guidance
(scale 3) with a fixed seed, so successive grids show how the same prompts improve.
"""

from typing import List, Optional

from absl import logging
import numpy as np

from cm3leon_jax.decoding import generation
from cm3leon_jax.decoding import DecodingConfig
from cm3leon_jax.decoding.pretrained import Pretrained

SAMPLING = DecodingConfig(temperature=1.0, top_p=0.9, guidance_scale=3.0, seed=0)


class TrainingSamples:
  """Draws `count` images from fixed validation captions with the current parameters."""

  def __init__(self, model, vocab, captions: List[str], image_tokenizer: str, cm3, model_dir: str):
    self.captions = captions
    self._pretrained = Pretrained(model, None, vocab, cm3, image_tokenizer, model_dir)

  @classmethod
  def for_task(cls, model, vocab, mixture_or_task_name: str, split: str, count: int,
               model_dir: str) -> Optional['TrainingSamples']:
    """Samples for a store task's `split` (None, with a log line, when there is nothing to use)."""
    from cm3leon_jax.data import store_tasks as stores  # pylint: disable=g-import-not-at-top
    info = stores.task_store_info(mixture_or_task_name)
    if not count or info is None or split not in info.stores:
      if count:
        logging.info('No sample grids: %s has no document store with a %r split.',
                     mixture_or_task_name, split)
      return None
    store = info.stores[split]
    captions = []
    for document in store.documents():
      captions.append(document.text)
      if len(captions) == count:
        break
    return cls(model, vocab, captions, store.manifest['image_tokenizer']['path'],
               info.assembly.cm3, model_dir)

  def __call__(self, params) -> np.ndarray:
    """uint8 images [count, H, W, 3], one per caption."""
    self._pretrained.params = params
    images, _ = generation.text_to_image(self._pretrained, self.captions, SAMPLING)
    return images[:, 0]
