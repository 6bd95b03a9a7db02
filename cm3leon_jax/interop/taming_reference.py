"""taming-transformers' VQModel, assembled from its modules, as a reference for parity and speed.

Used by the parity tests and ``tools/benchmark.py vqgan``; it needs torch and the package
`taming-transformers-rom1504` (installed with --no-deps by the Makefile's test setup), which the
library itself never imports. ``taming.models.vqgan`` would pull in pytorch_lightning, so the
model is built from the modules under the attribute names of VQModel's state dict.
"""

from cm3leon_jax.models.vqgan_config import VQGANConfig


def build_vqmodel(config: VQGANConfig, seed: int = 0):
  """A torch module with taming's encoder, quantize, quant_conv, post_quant_conv and decoder."""
  # pylint: disable=g-import-not-at-top
  import torch
  from taming.modules.diffusionmodules import model as taming_model
  from taming.modules.vqvae import quantize as taming_quantize
  # pylint: enable=g-import-not-at-top
  torch.manual_seed(seed)
  shapes = dict(ch=config.ch, out_ch=config.in_channels, ch_mult=config.ch_mult,
                num_res_blocks=config.num_res_blocks, attn_resolutions=config.attn_resolutions,
                dropout=config.dropout, in_channels=config.in_channels,
                resolution=config.resolution, z_channels=config.z_channels, double_z=False)
  model = torch.nn.Module()
  model.encoder = taming_model.Encoder(**shapes)
  model.decoder = taming_model.Decoder(**shapes)
  model.quantize = taming_quantize.VectorQuantizer2(config.n_embed, config.embed_dim,
                                                    beta=config.beta, sane_index_shape=True)
  model.quant_conv = torch.nn.Conv2d(config.z_channels, config.embed_dim, 1)
  model.post_quant_conv = torch.nn.Conv2d(config.embed_dim, config.z_channels, 1)
  return model.eval()
