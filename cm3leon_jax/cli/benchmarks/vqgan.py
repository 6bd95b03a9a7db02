"""The `vqgan` benchmark: our VQ-GAN's encode and decode against taming-transformers' modules.

Images/s of our jitted float32 VQ-GAN encoding images to codes and decoding codes to images,
against the taming-transformers PyTorch modules (the oracle of tests/test_vqgan.py) with the same
weights, config (--vqgan_gin), batch (--vqgan_batch) and threads. torch's OpenMP threads slow down
sharply when another process competes for the cores (on a shared 2-core machine the 2-thread peer
ran ~40x slower than with --threads=1), so check the load first.

It reports two measurements: ours_encode= peer_encode= ours_decode= peer_decode= unit=images/s
encode_ratio= decode_ratio=, then the code agreement and the shapes each side ran.
"""

from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from cm3leon_jax import gin_utils
from cm3leon_jax.cli.benchmarks import harness
from cm3leon_jax.interop import taming_reference, taming_vqgan
from cm3leon_jax.models.vqgan import VQGAN
from cm3leon_jax.models.vqgan_config import VQGANConfig

FLAGS = flags.FLAGS


def define_flags():
  flags.DEFINE_string('vqgan_gin', 'vqgan/tiny.gin',
                      'vqgan: gin file binding %VQGAN_CONFIG (path, or relative to gin/).')
  flags.DEFINE_integer('vqgan_batch', 16, 'vqgan: images per encode / decode call.')


def vqgan_steps(config: VQGANConfig, images: np.ndarray, codes: np.ndarray):
  """(synchronised encode / decode steps of ours and the peer (same weights), the fraction of
  codes both encoders agree on, the shapes each side ran)."""
  import torch  # pylint: disable=g-import-not-at-top
  peer = taming_reference.build_vqmodel(config)
  params = taming_vqgan.params_from_torch_state_dict(
      {k: v.numpy() for k, v in peer.state_dict().items()}, config)
  model = VQGAN(config)
  encode = jax.jit(lambda p, x: model.apply({'params': p}, x, method=VQGAN.encode_to_codes))
  decode = jax.jit(lambda p, c: model.apply({'params': p}, c, method=VQGAN.decode_codes))
  images_j, codes_j = jnp.asarray(images), jnp.asarray(codes)
  # Each side gets its native layout (NHWC / NCHW), prepared outside the timed steps.
  images_t = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
  codes_t = torch.from_numpy(codes.astype(np.int64))

  @torch.no_grad()
  def peer_encode():
    return peer.quantize(peer.quant_conv(peer.encoder(images_t)))[2][2]

  @torch.no_grad()
  def peer_decode():
    z_q = peer.quantize.embedding(codes_t).permute(0, 3, 1, 2)
    return peer.decoder(peer.post_quant_conv(z_q))

  ours_codes, peer_codes = np.asarray(encode(params, images_j)), peer_encode().numpy()
  agreement = float(np.mean(ours_codes == peer_codes)) if ours_codes.shape == peer_codes.shape \
      else 0.0
  ours_images, peer_images = decode(params, codes_j), peer_decode()
  shapes = {
      # NHWC in, [batch, h, w] codes out; decode: codes in, NHWC images out.
      'ours': harness.shape(batch=images_j.shape[0], resolution=images_j.shape[1],
                            latent=ours_codes.shape[1], decoded=ours_images.shape[1]),
      # NCHW.
      'peer': harness.shape(batch=images_t.shape[0], resolution=images_t.shape[2],
                            latent=peer_codes.shape[1], decoded=peer_images.shape[2]),
  }
  steps = {
      'ours_encode': lambda: encode(params, images_j).block_until_ready(),
      'peer_encode': peer_encode,
      'ours_decode': lambda: decode(params, codes_j).block_until_ready(),
      'peer_decode': peer_decode,
  }
  return steps, agreement, shapes


def benchmark() -> str:
  """Our VQ-GAN's encode and decode against taming's PyTorch modules; returns the RESULT line."""
  threads = harness.torch_threads()
  config = gin_utils.vqgan_config([FLAGS.vqgan_gin])
  rng = np.random.default_rng(0)
  side, batch = config.resolution, FLAGS.vqgan_batch
  images = rng.uniform(-1, 1, (batch, side, side, config.in_channels)).astype(np.float32)
  codes = rng.integers(0, config.n_embed, (batch, config.latent_size, config.latent_size),
                       dtype=np.int32)
  steps, agreement, shapes = vqgan_steps(config, images, codes)
  seconds = harness.interleaved_medians(steps, FLAGS.steps, FLAGS.warmup)
  rate = {name: batch / s for name, s in seconds.items()}
  print(vqgan_table(config, threads, seconds, rate, agreement,
                    harness.shapes_line(shapes['ours'], shapes['peer'])))
  ratio = {step: harness.ratio(rate[f'ours_{step}'], rate[f'peer_{step}'])
           for step in ('encode', 'decode')}
  return harness.result_line(
      'vqgan', ours_encode=f'{rate["ours_encode"]:.2f}', peer_encode=f'{rate["peer_encode"]:.2f}',
      ours_decode=f'{rate["ours_decode"]:.2f}', peer_decode=f'{rate["peer_decode"]:.2f}',
      unit='images/s', encode_ratio=f'{ratio["encode"]:.3f}',
      decode_ratio=f'{ratio["decode"]:.3f}', codes_agree=f'{agreement:.4f}',
      ours_shape=shapes['ours'], peer_shape=shapes['peer'])


def vqgan_table(config: VQGANConfig, threads: int, seconds, rate, agreement: float,
                shapes: str) -> str:
  """The vqgan benchmark's markdown report."""
  lines = [
      f'## vqgan: encode (images -> codes) and decode (codes -> images), float32, '
      f'{threads} threads',
      '',
      f'config: {FLAGS.vqgan_gin} ({config.resolution}x{config.resolution} -> '
      f'{config.latent_size}x{config.latent_size} codes of {config.n_embed}, ch={config.ch}, '
      f'ch_mult={list(config.ch_mult)}, num_res_blocks={config.num_res_blocks}, '
      f'attn_resolutions={list(config.attn_resolutions)}); batch={FLAGS.vqgan_batch}; '
      f'steps={FLAGS.steps} (median) after warmup={FLAGS.warmup}',
      shapes,
      f'peer: taming-transformers modules, torch {harness.torch_version()}, eval, no_grad; ours: '
      f'jax {jax.__version__}, jitted; same weights, codes agree on {agreement:.2%} of positions',
  ]
  rows = []
  for step in ('encode', 'decode'):
    ours, peer = f'ours_{step}', f'peer_{step}'
    rows.append((step, f'{seconds[ours]:.4f}', f'{seconds[peer]:.4f}', f'{rate[ours]:.2f}',
                 f'{rate[peer]:.2f}', f'{harness.ratio(rate[ours], rate[peer]):.3f}'))
  return harness.comparison_report(
      lines, '| step | ours (s) | peer (s) | ours images/s | peer images/s | ours/peer |', rows)
