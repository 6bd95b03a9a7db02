"""Evaluation: the synthetic-data judge, its report, and the sample grids drawn while training."""
