"""The command-line tools, one module per stage; `tools/*.py` and the `cm3leon-*` console scripts
run them. Each module's docstring is its --help text."""

import sys

from absl import app


def run_app(main, doc: str, **run_kwargs) -> None:
  """`app.run(main)` with `doc` as the usage text, whichever script or entry point started it.

  absl prints the __main__ module's docstring for --help; under a console script or a thin
  `tools/` wrapper that module is not the tool's own.
  """
  sys.modules['__main__'].__doc__ = doc
  app.run(main, **run_kwargs)
