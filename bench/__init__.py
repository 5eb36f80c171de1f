"""Benchmarks of the sidecar against a direct connection, nginx, a naive aiohttp proxy and the
seed's Go sidecar. ``python -m bench.run`` is the entry point; see docs/benchmarks.md."""
