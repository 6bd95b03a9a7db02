"""Expensive test inputs built once per test run and shared by every test that only reads them.

Under pytest-xdist each worker is its own process with its own module fixtures, so a module
fixture would be built once per worker. The folders here live in the run's shared temporary
folder instead; the first process to ask builds one while the others wait on its file lock.
"""

import fcntl
import os
import shutil
from typing import Callable

_COMPLETE = '.complete'


def _shared_root(tmp_path_factory) -> str:
  base = str(tmp_path_factory.getbasetemp())
  # A worker's base folder is <run>/popen-gwN; <run> is the same for all workers of one run.
  return os.path.dirname(base) if os.environ.get('PYTEST_XDIST_WORKER') else base


def cached_folder(tmp_path_factory, name: str, build: Callable[[str], None]) -> str:
  """The shared folder `name`, filled by `build(folder)` by the first process that asks.

  A build that fails leaves no folder behind, so the next process to ask builds it again and
  reports the same error.
  """
  root = os.path.join(_shared_root(tmp_path_factory), 'shared')
  os.makedirs(root, exist_ok=True)
  folder = os.path.join(root, name)
  with open(folder + '.lock', 'w') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
      if not os.path.exists(os.path.join(folder, _COMPLETE)):
        shutil.rmtree(folder, ignore_errors=True)
        os.makedirs(folder)
        try:
          build(folder)
        except BaseException:
          shutil.rmtree(folder, ignore_errors=True)
          raise
        open(os.path.join(folder, _COMPLETE), 'w').close()
    finally:
      fcntl.flock(lock, fcntl.LOCK_UN)
  return folder
