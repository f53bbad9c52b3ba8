"""Benchmarks of llm-gateway: direct calls vs the same calls through the gateway (`python -m bench.run`)."""
