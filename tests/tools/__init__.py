"""Tests of the command-line entry points: train_net.py, lazy_train_net.py, demo/, tools/,
packaging."""
