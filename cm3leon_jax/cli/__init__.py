"""The command-line tools, one module per stage; `tools/*.py` and the `cm3leon-*` console scripts
run them. Each module's docstring is its --help text.

Importing this package also sets up the tools' processes so that a healthy run prints no line that
looks like an error (see `quiet_library_logs` and `hide_gpus_from_tensorflow`).
"""

import logging as logging_std
import os
import sys
import tempfile

from absl import app, logging

# TensorFlow's C++ INFO lines (CUDA stub, oneDNN and CPU-feature notices at import, "Local
# rendezvous is aborting with status: OUT_OF_RANGE: End of sequence" after every finished
# tf.data iterator) say nothing about the run. Set before any tool imports TensorFlow (every tool
# imports this package first); TF's warnings and errors still print, and an explicit
# TF_CPP_MIN_LOG_LEVEL wins.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '1')

# Library messages that read as warnings (or worse) but report nothing wrong on a healthy run, as
# (the logger they are logged on, '' for the root logger; the path ending of the module that logs
# them; the message's format string). Each is dropped exactly; anything else those libraries log
# still shows.
_HARMLESS = (
    # Logged on import of apache_beam when google-apitools is not installed: only Beam's BigQuery
    # IO needs it, and no pipeline here reads or writes BigQuery.
    ('', os.path.join('apache_beam', 'io', 'gcp', 'internal', 'clients', 'bigquery', '__init__.py'),
     'apitools not found, and bigquery client libraries are not available despite the import not '
     'raising an ImportError.'),
    # The same (an INFO line, but it shouts "*CANNOT*"), when the BigQuery storage client is not.
    ('apache_beam.io.gcp.bigquery', os.path.join('apache_beam', 'io', 'gcp', 'bigquery.py'),
     'No module named google.cloud.bigquery_storage_v1. As a result, the ReadFromBigQuery '
     'transform *CANNOT* be used with `method=DIRECT_READ`.'),
)


class _DropHarmless(logging_std.Filter):
  """Drops the `_HARMLESS` records."""

  def filter(self, record):
    return not any(record.pathname.endswith(path) and record.msg == message
                   for _, path, message in _HARMLESS)


class _QuietLibraries(logging_std.Filter):
  """Drops orbax's and TensorStore's INFO lines (dozens per checkpoint save or restore), which
  bury the tools' own progress lines; their warnings and errors still show."""

  def filter(self, record):
    return record.levelno >= logging_std.WARNING or not any(
        name in record.pathname for name in ('/orbax/', '/tensorstore/'))


def quiet_library_logs() -> None:
  """Install the filters above (idempotent).

  `_DropHarmless` sits on the loggers those messages are logged on (a logger's filters see only
  its own records), so it also works before absl's handler is installed: the messages come at
  import time, when Python's last-resort handler would print them. `_QuietLibraries` sits on
  absl's handler, which every absl logger's record reaches.
  """
  for name in sorted({name for name, _, _ in _HARMLESS}):
    logger = logging_std.getLogger(name or None)
    if not any(isinstance(f, _DropHarmless) for f in logger.filters):
      logger.addFilter(_DropHarmless())
  handler = logging.get_absl_handler()
  if not any(isinstance(f, _QuietLibraries) for f in handler.filters):
    handler.addFilter(_QuietLibraries())


quiet_library_logs()


def hide_gpus_from_tensorflow() -> None:
  """Keep TensorFlow off the GPUs: in this project TF only runs input pipelines (tf.data, seqio,
  the TF text ops) on the CPU, and the accelerators are JAX's.

  `tf.config.set_visible_devices([], 'GPU')` changes TensorFlow's own device list only: it sets no
  environment variable (CUDA_VISIBLE_DEVICES would hide the GPUs from JAX as well, since both
  share the process's CUDA driver), so JAX still finds every GPU. On a GPU host it also stops TF
  from reserving most of each GPU's memory for itself.

  Listing the devices initialises TF's CUDA platform, and on a host without a GPU driver that logs
  `E ... cuda_platform.cc:51] failed call to cuInit: ...`, an error line about a device TF would
  not use anyway. That one line is dropped: TF's C++ logging writes straight to file descriptor 2,
  so the call's output is captured there and everything else is written back. Only this call is
  captured; later TF errors print as usual.

  Must run before TensorFlow's first op (its devices are fixed then). Imports TensorFlow, inside
  the capture: imported after absl's app.run has started (as the quickstart does), TF lists its
  devices while it is imported. Does nothing when called again or when TF's devices are already
  set up.
  """
  sys.stdout.flush()
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as captured:
    os.dup2(captured.fileno(), 2)
    try:
      import tensorflow as tf  # pylint: disable=g-import-not-at-top
      tf.config.set_visible_devices([], 'GPU')
    except RuntimeError:  # TF's devices are already initialised (an earlier op): too late.
      pass
    finally:
      os.dup2(saved, 2)
      os.close(saved)
    captured.seek(0)
    lines = captured.read().decode('utf-8', 'replace').splitlines(keepends=True)
  kept = ''.join(line for line in lines if 'failed call to cuInit' not in line)
  if kept:
    sys.stderr.write(kept)
    sys.stderr.flush()


def run_app(main, doc: str, **run_kwargs) -> None:
  """`app.run(main)` with `doc` as the usage text, whichever script or entry point started it.

  absl prints the __main__ module's docstring for --help; under a console script or a thin
  `tools/` wrapper that module is not the tool's own. A tool that has imported TensorFlow gets it
  kept off the GPUs first (`hide_gpus_from_tensorflow`); tools that import it later, inside main,
  call that themselves.
  """
  sys.modules['__main__'].__doc__ = doc
  if 'tensorflow' in sys.modules:
    hide_gpus_from_tensorflow()
  app.run(main, **run_kwargs)
