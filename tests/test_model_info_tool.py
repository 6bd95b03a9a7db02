"""tools/model_info.py reports what the gin file builds, on an abstract mesh."""

from helpers import run_tool


def model_info(*args):
  return run_tool(['tools/model_info.py', *args]).stdout


def test_tiny_model_info():
  out = model_info('--gin_file=gin/models/tiny.gin')
  # 512*64 embed + 256*64 positions + 2 layers * (4*64*64 + 2*64*256) + 64*512 head
  assert 'parameters: 180,224' in out


def test_sharded_memory_shrinks_with_fsdp():
  out = model_info('--gin_file=models/chameleon_34b.gin', '--mesh_fsdp=16', '--mesh_tensor=4')
  assert 'parameters: 34,294,308,864' in out
  per_device = float(out.split('parameters per device: ')[1].split(' GiB')[0])
  # 34.3e9 fp32 parameters over 64 devices: about 2 GiB each.
  assert 1.9 < per_device < 2.2
