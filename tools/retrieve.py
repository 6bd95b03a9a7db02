"""Runs cm3leon_jax.cli.retrieve (installed as `cm3leon-retrieve`); --help says what it does."""

from cm3leon_jax.cli import retrieve

if __name__ == '__main__':
  retrieve.run()
