"""Benchmarks of the serving path: one command each, each printing a table (docs/PERFORMANCE.md)."""
