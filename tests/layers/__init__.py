"""Tests of gcnet_d2.layers: the GC block and DCN."""
