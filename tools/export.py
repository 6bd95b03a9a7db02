"""Runs cm3leon_jax.cli.export (installed as `cm3leon-export`); --help says what it does."""

from cm3leon_jax.cli import export

if __name__ == '__main__':
  export.run()
