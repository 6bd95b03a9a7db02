"""Parsing gin files the same way everywhere (tools, trainer, tests).

Gin files live in the repository's ``gin/`` folder and may be named relative to it or to the
current directory. A typo in a file or a binding fails here, before any compilation, with gin's
message (which names the file and line).
"""

import logging
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
  # For the files' `include` lines (named relative to gin/, as the files themselves may be).
  for path in (GIN_DIR, os.path.dirname(GIN_DIR)):
    gin.add_config_file_search_path(path)
  # Gin is given existing absolute paths: for a relative name it would first try it as a Python
  # package resource and log `E ... resource_reader.py] Path not found: <name>` before finding it
  # under a search path.
  paths = [resolve(name) for name in gin_files]
  root = logging.getLogger()
  root.addFilter(_DROP_RESOURCE_LOOKUP_MISSES)
  try:
    gin.parse_config_files_and_bindings(paths, list(bindings), finalize_config=finalize)
  finally:
    root.removeFilter(_DROP_RESOURCE_LOOKUP_MISSES)


def resolve(name: str) -> str:
  """The absolute path of gin file `name`: as given (absolute, or relative to the current
  directory), else under gin/, else under the repository root.

  Raises:
    FileNotFoundError: none of those exists (the message says where it was looked for).
  """
  root = os.path.dirname(GIN_DIR)
  for candidate in (name, os.path.join(GIN_DIR, name), os.path.join(root, name)):
    if os.path.isfile(candidate):
      return os.path.abspath(candidate)
  raise FileNotFoundError(f'Gin file {name!r} not found (looked in the current directory, '
                          f'{GIN_DIR} and {root}).')


class _ResourceLookupMisses(logging.Filter):
  """Drops gin's `Path not found: <name>` errors while parsing.

  An `include 'models/x.gin'` line is looked up under each search path in turn (the current
  directory first) and, under each, also as a Python package resource; every miss before the
  search path that has the file logs that error. A file found nowhere still fails, with gin's
  IOError naming the paths searched, so the dropped lines tell nothing.
  """

  def filter(self, record):
    return not (record.msg == 'Path not found: %s'
                and record.pathname.endswith(os.path.join('gin', 'resource_reader.py')))


_DROP_RESOURCE_LOOKUP_MISSES = _ResourceLookupMisses()


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
