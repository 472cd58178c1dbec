"""Benchmarks, one package per topic: ``uv run python -m benchmarks.<topic>.<name>``."""
