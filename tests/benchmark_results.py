"""Running tools/benchmark.py in the benchmark tests and reading its RESULT line."""

from helpers import run_tool


def run_benchmark(name, flags):
  """(stdout, {key: value} of its RESULT line) of `tools/benchmark.py NAME FLAGS...`, which must
  exit 0 and end with exactly one `RESULT NAME key=value ...` line."""
  out = run_tool(['tools/benchmark.py', name, *flags]).stdout
  results = [line for line in out.splitlines() if line.startswith('RESULT ')]
  assert len(results) == 1 and out.rstrip().endswith(results[0]), out
  words = results[0].split()
  assert words[1] == name, results[0]
  pairs = [word.split('=', 1) for word in words[2:]]
  assert all(len(pair) == 2 for pair in pairs), results[0]
  fields = dict(pairs)
  assert len(fields) == len(pairs), f'a key repeats: {results[0]}'
  return out, fields


def shape(value: str) -> dict:
  """A RESULT shape value `dim:size,dim:size,...` as {dim: size}."""
  return {dim: int(size) for dim, size in (part.split(':') for part in value.split(','))}


def flag_values(flags) -> dict:
  """{'layers': 1, ...} from ['--layers=1', ...] (integer flags only)."""
  return {flag[2:].split('=')[0]: int(flag.split('=')[1]) for flag in flags}
