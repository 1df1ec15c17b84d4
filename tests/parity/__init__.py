"""Numerical parity with mmdetection's own code (tests/parity/mmdet_reference.py)."""
