"""The errors of checkpoint conversion."""


class CheckpointMismatchError(ValueError):
  """A checkpoint whose tensors do not match the configuration: wrong shape, missing or extra.

  The message lists every problem, each with the HF tensor name and our parameter path.
  """


class UnsupportedConfigError(ValueError):
  """A checkpoint configuration that the decoder cannot represent (the message names the field)."""


class EncoderOnlyError(UnsupportedConfigError):
  """Decoding asked of an imported tokenizer whose checkpoint has no decoder weights."""
