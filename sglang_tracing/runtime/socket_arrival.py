"""When the kernel received the first bytes still queued on a TCP socket (Linux receive timestamps).

An HTTP server's event loop may accept and read a connection long after its request arrived (it is
busy tokenizing and streaming others), and the request's user waited all that time. The kernel
stamps each incoming packet once any socket asked for receive timestamps; peeking one byte with
``SO_TIMESTAMPNS`` returns the stamp of the oldest unread packet, without consuming anything.
"""
from __future__ import annotations

import os
import socket
import struct
import sys

SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux; Python names it only on some builds
_TIMESPEC = struct.Struct("qq")


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


def first_queued_ns(fd: int) -> int | None:
    """Wall-clock ns at which the kernel received the oldest unread byte on TCP socket ``fd``; None
    when nothing is queued, the packet carries no stamp, or the platform has no such stamps."""
    try:
        with socket.socket(fileno=os.dup(fd)) as sock:
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            _, ancillary, _, _ = sock.recvmsg(1, socket.CMSG_SPACE(_TIMESPEC.size),
                                              socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except (OSError, ValueError):
        return None
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= _TIMESPEC.size:
            seconds, nanos = _TIMESPEC.unpack_from(data)
            return seconds * 1_000_000_000 + nanos or None
    return None
