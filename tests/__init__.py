"""gcnet_d2's tests; shared helpers in tests/testing.py."""
