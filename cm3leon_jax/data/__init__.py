"""Data: image-caption sources, image preprocessing and the built-in synthetic dataset."""
