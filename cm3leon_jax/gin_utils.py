"""Parsing gin files the same way everywhere (tools, trainer, tests).

Gin files live in the repository's ``gin/`` folder and may be named relative to it or to the
current directory. A typo in a file or a binding fails here, before any compilation, with gin's
message (which names the file and line).
"""

import os
from typing import Sequence

import gin

from cm3leon_jax.models.config import DecoderConfig

GIN_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'gin')


def parse(gin_files: Sequence[str], bindings: Sequence[str] = (), finalize: bool = False) -> None:
  """Clear gin's state, then parse `gin_files` and `bindings` (searching ``gin/`` as well).

  Raises:
    FileNotFoundError: a gin file is not found (the message names it and where it was looked for).
    ValueError: gin's own errors (unknown configurable or parameter, syntax), naming file and line.
  """
  gin.clear_config()
  for path in (GIN_DIR, os.path.dirname(GIN_DIR)):
    gin.add_config_file_search_path(path)
  for name in gin_files:
    if not (os.path.exists(name) or os.path.exists(os.path.join(GIN_DIR, name))
            or os.path.exists(os.path.join(os.path.dirname(GIN_DIR), name))):
      raise FileNotFoundError(f'Gin file {name!r} not found (looked in the current directory, '
                              f'{GIN_DIR} and {os.path.dirname(GIN_DIR)}).')
  gin.parse_config_files_and_bindings(list(gin_files), list(bindings), finalize_config=finalize)


def macro_value(gin_files: Sequence[str], bindings: Sequence[str], macro: str):
  """Parse the gin files and return `macro`'s value (a configurable reference is evaluated)."""
  parse(gin_files, bindings)
  try:
    reference = gin.query_parameter(f'%{macro}')
  except ValueError as e:
    raise ValueError(f'The gin files {list(gin_files)} define no {macro} macro.') from e
  if hasattr(reference, 'scoped_configurable_fn'):
    return reference.scoped_configurable_fn()
  return reference


def model_config(gin_files: Sequence[str], bindings: Sequence[str] = ()) -> DecoderConfig:
  """The DecoderConfig that the gin files bind to the macro MODEL_CONFIG."""
  return macro_value(gin_files, bindings, 'MODEL_CONFIG')


def vqgan_config(gin_files: Sequence[str], bindings: Sequence[str] = ()):
  """The VQGANConfig that the gin files bind to the macro VQGAN_CONFIG."""
  return macro_value(gin_files, bindings, 'VQGAN_CONFIG')
