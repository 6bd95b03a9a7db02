"""Runs cm3leon_jax.cli.build_index (installed as `cm3leon-build-index`); --help says what it does."""

from cm3leon_jax.cli import build_index

if __name__ == '__main__':
  build_index.run()
