"""The benchmark; run from the repository root as `python -m ops.bench.bench` (see docs/benchmark.md)."""
