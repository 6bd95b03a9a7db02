"""Runs cm3leon_jax.cli.sft_quickstart (installed as `cm3leon-sft-quickstart`); --help says what it
does."""

from cm3leon_jax.cli import sft_quickstart

if __name__ == '__main__':
  sft_quickstart.run()
