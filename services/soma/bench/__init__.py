"""Benchmarks (`soma bench ...`): figures printed as ratios against a baseline measured in
the same run, never as timed unit tests."""
