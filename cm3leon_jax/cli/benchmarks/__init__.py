"""Throughput benchmarks of cm3leon_jax against a peer, one module per benchmark; ``main`` runs one
by name (tools/benchmark.py, `cm3leon-benchmark`) and ``harness`` holds what they share."""
