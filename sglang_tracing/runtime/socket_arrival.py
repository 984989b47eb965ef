"""When the kernel received a request's bytes on a TCP socket, read after the fact.

An HTTP server's event loop may accept and read a connection long after its request arrived (it is
busy tokenizing and streaming others), and the request's user waited all that time. Two readings:
- before the server reads a new connection: the kernel stamps each incoming packet once any socket
  asked for receive timestamps; peeking one byte with ``SO_TIMESTAMPNS`` returns the stamp of the
  oldest unread packet, without consuming anything (nanoseconds);
- after it read (a kept-alive connection's next request): ``TCP_INFO``'s age of the last data
  received, in milliseconds counted in kernel ticks (1-4 ms apart, Linux's HZ).
"""
from __future__ import annotations

import os
import socket
import struct
import sys

SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux; Python names it only on some builds
_TIMESPEC = struct.Struct("qq")
_LAST_DATA_RECV = struct.Struct("<I")  # struct tcp_info.tcpi_last_data_recv: 8 u8 fields, 11 u32 before it
_LAST_DATA_RECV_OFFSET = 52


def keep_timestamps_on() -> socket.socket | None:
    """A socket whose receive-timestamp option keeps the kernel stamping every incoming packet; hold
    it for the process's life (the kernel stamps packets only while one such socket exists)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        holder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        holder.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        return holder
    except OSError:
        return None


def _borrowed(fd: int) -> socket.socket:
    """A socket object on a duplicate of ``fd``: closing it leaves the server's socket open."""
    return socket.socket(fileno=os.dup(fd))


def first_queued_ns(fd: int) -> int | None:
    """Wall-clock ns at which the kernel received the oldest unread byte on TCP socket ``fd``; None
    when nothing is queued, the packet carries no stamp, or the platform has no such stamps."""
    try:
        with _borrowed(fd) as sock:
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            _, ancillary, _, _ = sock.recvmsg(1, socket.CMSG_SPACE(_TIMESPEC.size),
                                              socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except (OSError, ValueError):
        return None
    return stamp_of(ancillary)


def stamp_of(ancillary: list[tuple[int, int, bytes]]) -> int | None:
    """The ``SO_TIMESTAMPNS`` stamp (wall-clock ns) in a ``recvmsg``'s ancillary data, if it holds one."""
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= _TIMESPEC.size:
            seconds, nanos = _TIMESPEC.unpack_from(data)
            return seconds * 1_000_000_000 + nanos or None
    return None


def last_data_age_ms(fd: int) -> int | None:
    """Milliseconds since TCP socket ``fd`` last received data (kernel ticks: a tick's error either
    way); None where TCP_INFO is not available."""
    try:
        with _borrowed(fd) as sock:
            info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    except (OSError, ValueError, AttributeError):
        return None
    if len(info) < _LAST_DATA_RECV_OFFSET + _LAST_DATA_RECV.size:
        return None
    return _LAST_DATA_RECV.unpack_from(info, _LAST_DATA_RECV_OFFSET)[0]
