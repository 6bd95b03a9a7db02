"""Runs cm3leon_jax.cli.train_text_tokenizer (installed as `cm3leon-train-text-tokenizer`); --help says what it does."""

from cm3leon_jax.cli import train_text_tokenizer

if __name__ == '__main__':
  train_text_tokenizer.run()
