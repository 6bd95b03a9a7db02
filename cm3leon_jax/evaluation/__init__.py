"""Evaluation: distribution metrics of generated images (FID with pytorch-fid's Inception, FD-CLIP,
KID, CLIP score), caption and VQA metrics (CIDEr-D, VQA accuracy), the synthetic-data judge, its
report, and the sample grids drawn while training."""
