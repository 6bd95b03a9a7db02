"""Runs cm3leon_jax.cli.preprocess (installed as `cm3leon-preprocess`); --help says what it does."""

from cm3leon_jax.cli import preprocess

if __name__ == '__main__':
  preprocess.run()
