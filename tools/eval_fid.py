"""Runs cm3leon_jax.cli.eval_fid (installed as `cm3leon-eval-fid`); --help says what it does."""

from cm3leon_jax.cli import eval_fid

if __name__ == '__main__':
  eval_fid.run()
