"""Benchmarks: scripts that print figures (speed, memory, sizes)."""
