"""Helpers for `python -m tests.benchmark` (no pytest tests live here)."""
