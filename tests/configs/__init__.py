"""Tests of the shipped configs (YAML and LazyConfig) and of safe config loading."""
