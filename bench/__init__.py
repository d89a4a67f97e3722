"""Benchmarks for Portico: load, streaming and memory (run with `python -m bench.run`; not tests)."""
