"""Tests of gcnet_d2.data: synthetic data, filtering, mapper, bad input."""
