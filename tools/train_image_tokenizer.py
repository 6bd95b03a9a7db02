"""Runs cm3leon_jax.cli.train_image_tokenizer (installed as `cm3leon-train-image-tokenizer`); --help says what it does."""

from cm3leon_jax.cli import train_image_tokenizer

if __name__ == '__main__':
  train_image_tokenizer.run()
