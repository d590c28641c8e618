"""Benchmarks of the gateway; not part of the test suite (`python -m bench.<name>`)."""
