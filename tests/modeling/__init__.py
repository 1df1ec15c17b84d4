"""Tests of gcnet_d2.modeling: backbones, GC bottlenecks, other detectors."""
