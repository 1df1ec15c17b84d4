"""tests/testing.py's free_port: two pytest-xdist workers never get the same port."""

from __future__ import annotations

import socket

import pytest

from tests import testing


@pytest.mark.parametrize("worker", ["gw0", "gw1", "gw7"])
def test_free_port_is_free_distinct_and_in_the_workers_block(monkeypatch, worker):  # noqa: ANN001
    monkeypatch.setenv("PYTEST_XDIST_WORKER", worker)
    low = testing.PORT_BASE + int(worker[2:]) * testing.PORT_BLOCK
    first = testing.free_port()
    busy = low + (first + 1 - low) % testing.PORT_BLOCK  # the port the next call tries first
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.bind(("", busy))
        held.listen()
        ports = [testing.free_port() for _ in range(5)]
    assert busy not in ports  # in use: skipped
    assert all(low <= p < low + testing.PORT_BLOCK for p in [first, *ports]), (worker, ports)
    assert len({first, *ports}) == 6  # a new port at each call
