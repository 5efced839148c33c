"""Benchmarks: they print tables and write JSON. Not tests."""
