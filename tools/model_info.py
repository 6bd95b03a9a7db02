"""Runs cm3leon_jax.cli.model_info (installed as `cm3leon-model-info`); --help says what it does."""

from cm3leon_jax.cli import model_info

if __name__ == '__main__':
  model_info.run()
