"""Runs cm3leon_jax.cli.train_clip (installed as `cm3leon-train-clip`); --help says what it does."""

from cm3leon_jax.cli import train_clip

if __name__ == '__main__':
  train_clip.run()
