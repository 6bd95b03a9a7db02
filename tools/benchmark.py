"""Runs cm3leon_jax.cli.benchmarks.main (installed as `cm3leon-benchmark`); --help says what it
does."""

from cm3leon_jax.cli.benchmarks import main as benchmarks

if __name__ == '__main__':
  benchmarks.run()
