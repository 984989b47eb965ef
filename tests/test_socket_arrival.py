"""Kernel receive timestamps of a connection's first queued bytes, on real loopback sockets: the stamp
is when the bytes arrived, not when the server got round to reading them."""
from __future__ import annotations

import socket
import sys
import time

import pytest

from sglang_tracing.runtime import socket_arrival

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux receive timestamps")


def _pair():
    server = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname())
    accepted, _ = server.accept()
    server.close()
    return client, accepted


def test_stamp_is_the_arrival_not_the_late_read():
    holder = socket_arrival.keep_timestamps_on()
    assert holder is not None
    client, accepted = _pair()
    with holder, client, accepted:
        time.sleep(0.05)  # the stamping switch takes effect asynchronously in the kernel
        before = time.time_ns()
        client.sendall(b"POST /generate HTTP/1.1\r\n")
        after = time.time_ns()
        time.sleep(0.2)  # a busy event loop reading late
        stamp = socket_arrival.first_queued_ns(accepted.fileno())
        read_at = time.time_ns()
        assert stamp is not None and before <= stamp <= after + 1_000_000, (stamp - before, after - before)
        assert read_at - stamp >= 200_000_000
        assert accepted.recv(100) == b"POST /generate HTTP/1.1\r\n"  # peeking consumed nothing


def test_nothing_queued_gives_none():
    holder = socket_arrival.keep_timestamps_on()
    client, accepted = _pair()
    with holder, client, accepted:
        assert socket_arrival.first_queued_ns(accepted.fileno()) is None
        assert socket_arrival.first_queued_ns(-1) is None  # a closed or bad descriptor: no stamp, no raise


def test_age_of_data_already_read():
    """A kept-alive connection's request read late: TCP_INFO still says how long ago its bytes came."""
    client, accepted = _pair()
    with client, accepted:
        client.sendall(b"GET / HTTP/1.1\r\n\r\n")
        sent = time.time_ns()
        time.sleep(0.2)
        assert accepted.recv(100)  # the server's late read consumes the bytes
        age = socket_arrival.last_data_age_ms(accepted.fileno())
        waited_ms = (time.time_ns() - sent) / 1e6
        assert age is not None and waited_ms - 12 <= age <= waited_ms + 12  # kernel ticks: 1-10 ms apart
        assert socket_arrival.last_data_age_ms(-1) is None
