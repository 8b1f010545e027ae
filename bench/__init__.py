"""Benchmarks: the engine against NeMo's own ``transcribe()``, and long-audio runs (see docs/BENCHMARKS.md)."""
