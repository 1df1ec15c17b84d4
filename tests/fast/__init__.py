"""Tests of gcnet_d2.fast: the inference and training speed-ups against the plain modules."""
