"""Runs cm3leon_jax.cli.quickstart (installed as `cm3leon-quickstart`); --help says what it does."""

from cm3leon_jax.cli import quickstart

if __name__ == '__main__':
  quickstart.run()
