"""chameleon_load: peak host memory of loading a Chameleon checkpoint onto a device mesh, ours
(each tensor placed on its devices as it is read) against a naive loader (the whole model read
into host memory in float32 first, then placed), and the loading time against reading the files.

A random checkpoint of about --load_size_mb in bfloat16 is written in transformers' layout; each
loader then runs in a fresh process laid out over --load_devices forced CPU devices (fsdp), and
reports its peak resident memory minus its memory after imports, as a multiple of the checkpoint's
size. On CPU devices the placed parameters live in host memory too, so 1x is the floor.
"""

import json
import os
import subprocess
import sys
import tempfile
import time

from absl import flags
import numpy as np

FLAGS = flags.FLAGS


def define_flags():
  """The benchmark's flags."""
  flags.DEFINE_integer('load_size_mb', 1024, 'Size of the random bf16 checkpoint, in MiB.')
  flags.DEFINE_integer('load_devices', 8, 'Forced CPU devices the model is laid out over (fsdp).')


def _config(size_mb: int):
  """A chameleon DecoderConfig of about `size_mb` MiB in bf16 (width 1024, layers to fit)."""
  from cm3leon_jax.models.config import DecoderConfig  # pylint: disable=g-import-not-at-top
  width, mlp, vocab = 1024, 2816, 16384
  per_layer = 4 * width * width + 3 * width * mlp
  layers = max(1, round((size_mb * 2**20 / 2 - 2 * vocab * width) / per_layer))
  return DecoderConfig(family='chameleon', vocab_size=vocab, num_layers=layers, embed_dim=width,
                       num_heads=8, mlp_dim=mlp, max_length=256, activation='silu', qk_norm=True,
                       param_dtype='bfloat16', dtype='bfloat16', scan_layers=False)


def _write_checkpoint(folder: str, config) -> int:
  """A random checkpoint of `config` in transformers' layout; returns its bytes on disk."""
  import jax  # pylint: disable=g-import-not-at-top
  from cm3leon_jax.interop import hf_chameleon  # pylint: disable=g-import-not-at-top
  from cm3leon_jax.interop.mapping import expected_shapes  # pylint: disable=g-import-not-at-top
  from flax import traverse_util  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  flat = {path: (rng.standard_normal(shape, np.float32) * 0.02).astype(jax.numpy.bfloat16)
          for path, shape in expected_shapes(config).items()}
  hf_chameleon.save_chameleon(folder, config, traverse_util.unflatten_dict(flat, sep='/'))
  return os.path.getsize(os.path.join(folder, 'model.safetensors'))


def _status_bytes(field: str) -> int:
  """A memory line of /proc/self/status (VmRSS: now; VmHWM: the peak since the last reset)."""
  with open('/proc/self/status', encoding='utf-8') as f:
    return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ':'))


def _reset_peak() -> None:
  """Start the peak (VmHWM) afresh from the current resident size (Linux's clear_refs 5)."""
  with open('/proc/self/clear_refs', 'w', encoding='utf-8') as f:
    f.write('5')


def measure(folder: str, how: str, devices: int) -> dict:
  """In this (fresh) process: load `folder` the `how` way over `devices` CPU devices; returns
  the seconds and the peak resident bytes above the memory after imports."""
  os.environ['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={devices}'
  import jax  # pylint: disable=g-import-not-at-top
  from flax import traverse_util  # pylint: disable=g-import-not-at-top
  from cm3leon_jax import partitioning  # pylint: disable=g-import-not-at-top
  from cm3leon_jax.interop import hf_chameleon  # pylint: disable=g-import-not-at-top
  from cm3leon_jax.models.decoder import Decoder, init_params  # pylint: disable=g-import-not-at-top
  config = hf_chameleon.config_from_hf(hf_chameleon.read_config(folder), param_dtype='bfloat16',
                                       dtype='bfloat16', scan_layers=False)
  mesh = partitioning.make_mesh(partitioning.MeshConfig(fsdp=-1))
  boxed = jax.eval_shape(lambda: init_params(Decoder(config), jax.random.key(0)))
  shardings = traverse_util.flatten_dict(partitioning.logical_shardings(boxed, mesh), sep='/')
  baseline = _status_bytes('VmRSS')
  _reset_peak()  # The imports' own peak is not the loader's.
  start = time.perf_counter()
  if how == 'ours':
    _, params = hf_chameleon.load_chameleon(
        folder, config, place=lambda path, x: jax.device_put(x, shardings[path]))
  elif how == 'naive':  # The whole model in float32 on the host, then placed.
    _, host = hf_chameleon.load_chameleon(folder, config.replace(param_dtype='float32'))
    flat = traverse_util.flatten_dict(host, sep='/')
    params = {path: jax.device_put(x.astype(jax.numpy.bfloat16), shardings[path])
              for path, x in flat.items()}
  else:  # 'read': every tensor read from the files, nothing converted or placed.
    from safetensors import safe_open  # pylint: disable=g-import-not-at-top
    with safe_open(os.path.join(folder, 'model.safetensors'), framework='numpy') as f:
      params = [f.get_tensor(name).sum() for name in f.keys()]
  jax.block_until_ready(params)
  seconds = time.perf_counter() - start
  return {'seconds': seconds, 'peak_above_imports': _status_bytes('VmHWM') - baseline}


def _run(folder: str, how: str) -> dict:
  code = ('import json, sys; from cm3leon_jax.cli.benchmarks import chameleon_load as b; '
          'print("MEASURED", json.dumps(b.measure(sys.argv[1], sys.argv[2], int(sys.argv[3]))))')
  out = subprocess.run([sys.executable, '-c', code, folder, how, str(FLAGS.load_devices)],
                       capture_output=True, text=True, check=True,
                       env=dict(os.environ, JAX_PLATFORMS='cpu'))
  line = next(l for l in out.stdout.splitlines() if l.startswith('MEASURED '))
  return json.loads(line[len('MEASURED '):])


def benchmark() -> str:
  """The report and its RESULT line (memory as multiples of the checkpoint's size)."""
  config = _config(FLAGS.load_size_mb)
  with tempfile.TemporaryDirectory() as folder:
    size = _write_checkpoint(folder, config)
    results = {how: _run(folder, how) for how in ('read', 'ours', 'naive')}
  ratio = {how: r['peak_above_imports'] / size for how, r in results.items()}
  lines = [f'## chameleon_load: {size / 2**20:.0f} MiB bf16 checkpoint ({config.num_layers} '
           f'layers, width {config.embed_dim}) onto {FLAGS.load_devices} CPU devices (fsdp)', '',
           '| loader | peak memory above imports | x checkpoint | seconds |', '|---|---|---|---|']
  for how, label in (('ours', 'ours: each tensor placed as read'),
                     ('naive', 'naive: all in float32 on the host, then placed'),
                     ('read', 'reading the file only')):
    r = results[how]
    lines.append(f'| {label} | {r["peak_above_imports"] / 2**20:.0f} MiB | {ratio[how]:.2f} | '
                 f'{r["seconds"]:.2f} |')
  lines.append('')
  lines.append(f'RESULT chameleon_load ours={ratio["ours"]:.3f} peer={ratio["naive"]:.3f} '
               f'unit=x_checkpoint_bytes ratio={ratio["ours"] / ratio["naive"]:.3f} '
               f'ours_seconds={results["ours"]["seconds"]:.2f} '
               f'read_seconds={results["read"]["seconds"]:.2f} '
               f'ours_shape=bytes:{size},devices:{FLAGS.load_devices} '
               f'peer_shape=bytes:{size},devices:{FLAGS.load_devices}')
  return '\n'.join(lines)
