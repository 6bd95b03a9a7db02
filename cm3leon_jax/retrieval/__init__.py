"""Retrieval augmentation (SPEC section 4): a ScaNN memory bank of document embeddings and the
rules that pick the retrieved documents prepended to a query document."""
