"""Runs cm3leon_jax.cli.generate (installed as `cm3leon-generate`); --help says what it does."""

from cm3leon_jax.cli import generate

if __name__ == '__main__':
  generate.run()
