"""Benchmarks: realistic data sets at scale and scenarios measured against baselines."""
