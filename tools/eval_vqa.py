"""Runs cm3leon_jax.cli.eval_vqa (installed as `cm3leon-eval-vqa`); --help says what it does."""

from cm3leon_jax.cli import eval_vqa

if __name__ == '__main__':
  eval_vqa.run()
