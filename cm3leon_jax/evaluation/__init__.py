"""Evaluation: the synthetic-data judge (FID, captioning and VQA metrics come later)."""
