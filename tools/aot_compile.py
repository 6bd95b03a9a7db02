"""Runs cm3leon_jax.cli.aot_compile (installed as `cm3leon-aot-compile`); --help says what it does."""

from cm3leon_jax.cli import aot_compile

if __name__ == '__main__':
  aot_compile.run()
