"""Runs cm3leon_jax.cli.caption (installed as `cm3leon-caption`); --help says what it does."""

from cm3leon_jax.cli import caption

if __name__ == '__main__':
  caption.run()
