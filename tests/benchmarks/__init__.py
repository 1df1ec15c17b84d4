"""Tests of benchmarks/ (development only)."""
