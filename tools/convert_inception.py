"""Runs cm3leon_jax.cli.convert_inception (installed as `cm3leon-convert-inception`); --help says
what it does."""

from cm3leon_jax.cli import convert_inception

if __name__ == '__main__':
  convert_inception.run()
