"""Tokenizers: text vocabularies, the multimodal vocabulary and its TF ops, the image tokenizer
(VQ-GAN) and the frozen CLIP document encoder. They turn raw text and images into what a document
store holds."""
