"""Training: the train state and step, optimizer, losses, checkpoints and training metrics.

The state and step import without TensorFlow or seqio, so a host that trains from a prepared
cache needs neither.
"""
