"""Benchmarks of the CP mathematics and of the whole model (``tools/benchmark_*.py``)."""
