r"""Throughput benchmarks of cm3leon_jax against a peer (mostly PyTorch), in one process, same run.

Usage:
  .venv/bin/python tools/benchmark.py decoder [--layers=4 --embed_dim=512 ...]
  .venv/bin/python tools/benchmark.py train [same shape flags]
  cm3leon-benchmark NAME [flags]   (the installed entry point)

Benchmarks (the positional NAME; one module of cm3leon_jax/cli/benchmarks/ each, listed in
``BENCHMARKS``):
  decoder: forward + backward of the cm3leon decoder in float32 against transformers'
    OPTForCausalLM of the same shape, batch and threads; our model FLOP/s against this machine's
    measured jnp float32 matmul rate.
  train: the full training step of our trainer (jitted, AdamW + clipping, donated state, 1-device
    mesh) against the same OPT peer trained by torch.optim.AdamW with clipping: tokens/s of both
    and our MFU. Same shape flags as `decoder`.
  pipeline: packed seqio batches/s of the quickstart input pipeline against the batches/s the
    quickstart train step consumes, and Beam preprocessing images/s with 1 and 2 workers.
  generate: greedy new tokens/s of ours against transformers' Chameleon generate (same weights,
    same tokens), and per-token time against the memory-bandwidth floor.
  retrieval: ScaNN (tree + asymmetric hashing + reorder) against exact numpy search over 1M x 512
    clustered, L2-normalised embeddings: queries/s of both and ScaNN's recall@10.
  vqgan: images/s of our jitted float32 VQ-GAN encoding and decoding against the
    taming-transformers PyTorch modules with the same weights, config (--vqgan_gin) and batch.
  fid: Inception pool-feature images/s of our jitted FID InceptionV3 against pytorch-fid's
    module, same batch (--fid_batch, --fid_size) and weights (--inception, or random ones in
    pytorch-fid's format), features compared.
  chameleon_load: peak host memory of loading a random bf16 Chameleon checkpoint
    (--load_size_mb) onto --load_devices CPU devices, ours (each tensor placed as read) against
    a naive loader (all of it in float32 on the host first), as multiples of the checkpoint's
    size; and the loading time against reading the file.

Each benchmark prints a markdown report (with the shapes each side ran) and ends with one
machine-readable line:
  RESULT <name> ours=<x> peer=<y> unit=<unit> ratio=<ours/peer> ... ours_shape=<s> peer_shape=<s>
where a shape is `dim:size,dim:size,...` read off what that side actually ran (vqgan reports
ours_encode= peer_encode= ours_decode= peer_decode= and encode_ratio= decode_ratio=).

Both sides are timed in alternation in one process (see harness.interleaved_medians). The speed
defaults (XLA flags, nn.scan) and what else was tried are documented at harness.TUNED_XLA_FLAGS and
--scan_layers.
"""

from absl import app

from cm3leon_jax import cli
from cm3leon_jax.cli.benchmarks import (chameleon_load, decoder, fid, generate, harness, pipeline,
                                        retrieval, train, vqgan)

BENCHMARKS = {
    'decoder': decoder,
    'train': train,
    'vqgan': vqgan,
    'pipeline': pipeline,
    'retrieval': retrieval,
    'generate': generate,
    'fid': fid,
    'chameleon_load': chameleon_load,
}


def define_flags():
  """Every benchmark's flags (one command line reaches any of them)."""
  harness.define_flags()
  for module in BENCHMARKS.values():
    module.define_flags()


def main(argv):
  if len(argv) != 2 or argv[1] not in BENCHMARKS:
    raise app.UsageError(f'Give one benchmark NAME from {sorted(BENCHMARKS)}; got {argv[1:]}.')
  harness.configure_backend()
  print(BENCHMARKS[argv[1]].benchmark(), flush=True)


def run():
  """Entry point of tools/benchmark.py and `cm3leon-benchmark`."""
  define_flags()
  cli.run_app(main, __doc__)


if __name__ == '__main__':
  run()
