"""What every benchmark shares: the backend setup, timing in alternation, the markdown report and
the final `RESULT` line, including the shapes each side ran.

Both sides of a comparison are timed in alternation in one process (``interleaved_medians``), so
background load and clock drift on a small shared machine hit them alike.
"""

import os
import statistics
import time
from typing import Callable, Dict, Mapping

from absl import flags

FLAGS = flags.FLAGS

# XLA:CPU flags tuned on jaxlib 0.10 (2-core AMD EPYC, float32), measured by `decoder` against the
# same-run torch peer:
# * --xla_cpu_experimental_ynn_fusion_type=individual_dot: by default XLA:CPU hands YNNPACK whole
#   fusions of a dot plus its elementwise/reduce neighbours. For the attention backward it builds
#   one fusion of dO V^T with the softmax-backward multiply and row reduction, whose dot runs at
#   ~13 GFLOP/s instead of ~180 (about 15% of the step's time). Restricting YNNPACK to plain dots
#   (elementwise ops go back to XLA's loop emitter) cut attention fwd+bwd from ~180 to ~134 ms per
#   layer and raised the step from 0.69x to ~0.78x the peer's tokens/s. No YNNPACK at all ('')
#   gave ~0.75x; 'individual_dot,eltwise' ~0.76x; oneDNN dot fusion ~0.75x; unrolled layers,
#   --xla_cpu_prefer_vector_width=512, --xla_cpu_use_fusion_emitters=false and
#   --xla_cpu_enable_concurrency_optimized_scheduler=false did not help (within +-5% noise).
# The flag names are experimental and XLA aborts on an unknown flag, so they are applied only on the
# jaxlib line they were tuned for (see `xla_flags_for_this_jaxlib`).
TUNED_XLA_FLAGS = '--xla_cpu_experimental_ynn_fusion_type=individual_dot'
TUNED_JAXLIB_PREFIX = '0.10.'


def define_flags():
  """The flags every benchmark reads."""
  flags.DEFINE_integer('steps', 10, 'Timed steps per side (the median is reported).')
  flags.DEFINE_integer('warmup', 2,
                       'Untimed steps per side first (compilation, allocator warm-up).')
  flags.DEFINE_integer('threads', 0,
                       'Threads for both sides (0: every core this process may use).')
  flags.DEFINE_string('xla_flags', None,
                      'XLA flags added to $XLA_FLAGS before the backend starts. Default: '
                      f'{TUNED_XLA_FLAGS!r} on jaxlib {TUNED_JAXLIB_PREFIX}x, none otherwise.')


def xla_flags_for_this_jaxlib() -> str:
  """--xla_flags if given, else the tuned flags when this jaxlib is the line they were tuned on."""
  if FLAGS.xla_flags is not None:
    return FLAGS.xla_flags
  import jaxlib  # pylint: disable=g-import-not-at-top
  return TUNED_XLA_FLAGS if jaxlib.__version__.startswith(TUNED_JAXLIB_PREFIX) else ''


def configure_backend():
  """Set XLA flags and the thread budget; must run before JAX's backend starts (first array)."""
  given = os.environ.get('XLA_FLAGS', '')
  # A flag the caller already set in $XLA_FLAGS wins over ours.
  extra = [f for f in xla_flags_for_this_jaxlib().split() if f.split('=')[0] not in given]
  os.environ['XLA_FLAGS'] = ' '.join([given, *extra]).strip()
  if FLAGS.threads:
    # XLA:CPU sizes its thread pool from the CPUs this process may run on and has no flag for it,
    # so --threads pins the process (torch gets the same count, see `torch_threads`).
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:FLAGS.threads])


def thread_count() -> int:
  """Threads each framework uses: the CPUs this process may run on (see configure_backend)."""
  return len(os.sched_getaffinity(0))


def torch_threads() -> int:
  """Give torch as many threads as XLA sizes its pool with; returns the count."""
  import torch  # pylint: disable=g-import-not-at-top
  threads = thread_count()
  torch.set_num_threads(threads)
  return threads


def torch_version() -> str:
  import torch  # pylint: disable=g-import-not-at-top
  return torch.__version__


def interleaved_medians(steps_by_name: Mapping[str, Callable], rounds: int,
                        warmup: int) -> Dict[str, float]:
  """Median wall time of each named step, timed in alternation: a, b, a, b, ...

  Alternating (rather than all of a, then all of b) exposes both sides to the same background load
  and clock drift, which on a small shared machine moves single timings by tens of percent. Each
  step must synchronise itself before returning.
  """
  for step in steps_by_name.values():
    for _ in range(warmup):
      step()
  times = {name: [] for name in steps_by_name}
  for _ in range(rounds):
    for name, step in steps_by_name.items():
      start = time.perf_counter()
      step()
      times[name].append(time.perf_counter() - start)
  return {name: statistics.median(values) for name, values in times.items()}


def median_seconds(step: Callable, repeats: int) -> float:
  """Median wall time of `step` (which must synchronise) over `repeats` calls after one warm-up."""
  return interleaved_medians({'step': step}, repeats, 1)['step']


def shape(**dims) -> str:
  """The shape one side ran, as one RESULT value: ``name:size,name:size,...`` (given order)."""
  return ','.join(f'{name}:{int(size)}' for name, size in dims.items())


def shapes_line(ours: str, peer: str) -> str:
  """The report line naming the shapes each side ran, and whether they are the same."""
  same = 'the same' if ours == peer else 'DIFFERENT, so the rates are not comparable'
  return f'shapes run: ours {ours}; peer {peer} ({same})'


def ratio(ours: float, peer: float) -> float:
  """ours / peer, the comparison every report and RESULT line states (speed-up when > 1)."""
  return ours / peer


def comparison_report(header_lines, columns: str, rows) -> str:
  """A benchmark's markdown report: its header lines, XLA_FLAGS, then the rows under `columns`."""
  separator = '|' + '---|' * columns.count(' | ') + '---|'
  lines = list(header_lines) + [f'XLA_FLAGS={os.environ.get("XLA_FLAGS", "")!r}', '', columns,
                                separator]
  return '\n'.join(lines + [f'| {" | ".join(row)} |' for row in rows])


def result_line(name: str, **fields: str) -> str:
  """The machine-readable last line: ``RESULT <name> key=value ...`` (values formatted already,
  without spaces), in the given order."""
  for key, value in fields.items():
    if not value or any(c.isspace() for c in value):
      raise ValueError(f'RESULT value {key}={value!r} must be non-empty without spaces.')
  return ' '.join(['RESULT', name] + [f'{key}={value}' for key, value in fields.items()])
