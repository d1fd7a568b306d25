"""Benchmarks, one module per stage, all reporting the same row format."""
