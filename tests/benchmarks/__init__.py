"""Tests of the benchmark's own parts (the fast upstream answers like the hosted API)."""
