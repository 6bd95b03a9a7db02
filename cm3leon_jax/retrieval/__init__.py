"""Retrieval augmentation (RA-CM3, arXiv 2211.12561, section 3; CM3Leon, arXiv 2309.02591,
section 2.1): a ScaNN memory bank of document embeddings and the rules that pick the retrieved
documents prepended to a query document."""
