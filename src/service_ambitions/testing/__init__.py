"""Test doubles shared by the test suite and the benchmark (never used by a run)."""
