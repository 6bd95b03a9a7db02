"""Runs cm3leon_jax.cli.convert_chameleon (installed as `cm3leon-convert-chameleon`); --help says
what it does."""

from cm3leon_jax.cli import convert_chameleon

if __name__ == '__main__':
  convert_chameleon.run()
