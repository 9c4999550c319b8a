"""Benchmarks behind `agentrt bench` (JSON + table + plot)."""
