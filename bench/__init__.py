"""Benchmark workers for scripts/bench.py (one configuration per process)."""
