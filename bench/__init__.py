"""Benchmarks: python -m bench (CPU, all of them) and python -m bench.gpu."""
