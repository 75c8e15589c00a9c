"""The companion's benchmark: `python -m benchmarks [--quick] [--json PATH]` (see docs/benchmark.md)."""
