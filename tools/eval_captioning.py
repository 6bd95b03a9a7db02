"""Runs cm3leon_jax.cli.eval_captioning (installed as `cm3leon-eval-captioning`); --help says what it does."""

from cm3leon_jax.cli import eval_captioning

if __name__ == '__main__':
  eval_captioning.run()
