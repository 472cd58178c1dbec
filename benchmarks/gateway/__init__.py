"""Gateway benchmarks: ``uv run python -m benchmarks.gateway.submit_throughput``."""
