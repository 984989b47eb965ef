"""HTTP/1.1 exchanges timed the way their user sees them, many in flight from one thread.

A request's clock starts just before its bytes go to the socket and each streamed chunk is stamped
when the read that brought it returned, before any parsing. One thread with non-blocking
sockets (``h11`` for the protocol) instead of a thread per request: with 64 Python threads a
request's "sent" stamp can precede its bytes by tens of milliseconds of waiting for the GIL, and a
chunk's arrival stamp can trail its bytes, so the client itself would stretch the TTFT it reports.
Connecting is not timed (clients keep connections open; the server cannot see a TCP handshake). With
``keep_alive`` a finished connection carries the next request, as pooling clients (the OpenAI SDK) do.

Each read also takes the kernel's receive stamp (``SO_TIMESTAMPNS``; for TCP, Linux gives the stamp of the
last packet the read took): the first chunk's ``first_kernel_ns`` says when its bytes had reached this
host, ``chunk_ns[0]`` when this client read them; the difference is the client's own delay, not the
server's. (Stamped when ``select`` returned instead, a read could take a packet that arrived after it.)
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import selectors
import socket
import time
from collections import deque
from collections.abc import Callable
from urllib.parse import urlsplit

import h11

from sglang_tracing.runtime.socket_arrival import SO_TIMESTAMPNS, stamp_of


class HTTPStatusError(OSError):
    """The server answered with a status other than 200."""


NO_RESPONSE = "the server closed the connection without a response"
_STAMP_SPACE = socket.CMSG_SPACE(16)  # one struct timespec


@dataclasses.dataclass
class _Exchange:
    index: int
    sock: socket.socket
    conn: h11.Connection
    sent_ns: int
    deadline: float
    stream: bool
    kept_alive: bool  # sent on a connection that carried an earlier request
    status: int = 0
    body: bytearray = dataclasses.field(default_factory=bytearray)
    line_start: int = 0  # where the next unread streamed line begins in ``body``
    chunk_ns: list[int] = dataclasses.field(default_factory=list)
    first_kernel_ns: int | None = None  # the kernel's receive stamp of the read that held the first chunk
    last: dict | None = None
    address: tuple | None = None


def _request_bytes(conn: h11.Connection, host: str, path: str, payload: bytes, keep_alive: bool,
                   extra: list | None = None) -> bytes:
    headers = [("Host", host), ("Content-Type", "application/json"), ("Content-Length", str(len(payload))),
               *(extra or [])]
    if not keep_alive:
        headers.append(("Connection", "close"))
    return (conn.send(h11.Request(method="POST", target=path, headers=headers)) + conn.send(h11.Data(data=payload))
            + conn.send(h11.EndOfMessage()))


def _read_lines(ex: _Exchange, now: int, kernel_ns: int | None) -> None:
    """Stamp every complete ``data:`` line of a streamed response that arrived in this read."""
    while (end := ex.body.find(b"\n", ex.line_start)) >= 0:
        line = bytes(ex.body[ex.line_start:end]).strip()
        ex.line_start = end + 1
        if line.startswith(b"data:") and line != b"data: [DONE]":
            if not ex.chunk_ns:
                ex.first_kernel_ns = kernel_ns
            ex.chunk_ns.append(now)
            ex.last = json.loads(line[5:])


def _on_readable(ex: _Exchange) -> bool:
    """Feed what the socket holds to h11; True once the response is complete."""
    data, ancillary, _, _ = ex.sock.recvmsg(1 << 16, _STAMP_SPACE)
    now = time.time_ns()
    kernel_ns = stamp_of(ancillary)
    ex.conn.receive_data(data)
    while True:
        try:
            event = ex.conn.next_event()
        except h11.RemoteProtocolError as exc:  # e.g. the server closed mid-response
            raise ConnectionError(NO_RESPONSE if not ex.status else f"broken HTTP response ({exc})") from None
        if event is h11.NEED_DATA:
            return False
        if isinstance(event, h11.Response):
            ex.status = event.status_code
        elif isinstance(event, h11.Data):
            ex.body += event.data
            if ex.stream and ex.status == 200:
                _read_lines(ex, now, kernel_ns)
        elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
            return True


def _finish(ex: _Exchange, done_ns: int) -> dict:
    if not ex.status:
        raise ConnectionError(NO_RESPONSE)
    if ex.status != 200:
        raise HTTPStatusError(f"HTTP {ex.status}: {bytes(ex.body[:200]).decode(errors='replace')}")
    if not ex.stream:
        ex.last, ex.chunk_ns = json.loads(bytes(ex.body)), [done_ns]
        ex.first_kernel_ns = None
    if ex.last is None:
        raise HTTPStatusError("streamed response carried no data line")
    return {**ex.last, "client": {"sent_ns": ex.sent_ns, "chunk_ns": ex.chunk_ns, "done_ns": done_ns,
                                  "kept_alive": ex.kept_alive, "first_kernel_ns": ex.first_kernel_ns}}


def post_json(url: str, bodies: list[dict], concurrency: int = 1, timeout: float = 120,
              keep_alive: bool = False, on_done: Callable[[int], None] | None = None,
              headers: dict | None = None) -> list[dict]:
    """POST each body to ``url`` with at most ``concurrency`` in flight; each response's JSON (the last
    streamed one when ``body["stream"]``) plus ``client``: sent_ns, chunk_ns (one per streamed chunk;
    for a whole response, when it ended), done_ns, kept_alive (sent on a connection that carried an earlier request). Raises
    HTTPStatusError, TimeoutError or OSError. ``on_done(n)`` is called as the n-th response completes."""
    return post_json_to([(url, body) for body in bodies], concurrency, timeout, keep_alive, headers, on_done=on_done)


def post_json_to(targets: list[tuple], concurrency: int = 1, timeout: float = 120,
                 keep_alive: bool = False, headers: dict | None = None, together: int = 1,
                 on_done: Callable[[int], None] | None = None) -> list[dict]:
    """``post_json`` with a URL for each body (sent in this order, from the same one thread), started
    ``together`` at a time: e.g. a prefill-decode pair's two halves of each request. ``headers`` go on
    every request; a target ``(url, body, headers)`` adds its own."""
    todo = deque(enumerate(targets))
    results: list[dict | None] = [None] * len(targets)
    active: dict[int, _Exchange] = {}
    idle: dict[tuple, list[tuple[socket.socket, h11.Connection]]] = {}  # kept-alive connections, by address
    extra = list((headers or {}).items())
    with selectors.DefaultSelector() as sel:
        try:
            while todo or active:
                while todo and len(active) + together <= max(concurrency, together):
                    for _ in range(min(together, len(todo))):
                        i, (url, body, *own) = todo.popleft()
                        parts = urlsplit(url)
                        address = (parts.hostname, parts.port or 80)
                        ex = _start(i, body, address, parts.netloc, parts.path or "/", timeout, keep_alive,
                                    idle.setdefault(address, []), extra + list((own[0] or {}).items()) if own else extra)
                        ex.address = address
                        active[i] = ex
                        sel.register(ex.sock, selectors.EVENT_READ, ex)
                wait = min(ex.deadline for ex in active.values()) - time.monotonic()
                events = sel.select(max(wait, 0))
                for key, _ in events:
                    ex = key.data
                    if _on_readable(ex):
                        sel.unregister(ex.sock)
                        del active[ex.index]
                        results[ex.index] = _finish(ex, time.time_ns())
                        if on_done is not None:
                            on_done(len(targets) - len(todo) - len(active))
                        if keep_alive and ex.conn.our_state is ex.conn.their_state is h11.DONE:
                            ex.conn.start_next_cycle()
                            idle[ex.address].append((ex.sock, ex.conn))
                        else:
                            ex.sock.close()
                if any(ex.deadline <= time.monotonic() for ex in active.values()):
                    late = next(ex for ex in active.values() if ex.deadline <= time.monotonic())
                    raise TimeoutError(f"no complete response from {targets[late.index][0]} within {timeout:.0f} s")
        finally:
            for sock in [ex.sock for ex in active.values()] + [sock for pool in idle.values() for sock, _ in pool]:
                sock.close()
    return results  # type: ignore[return-value]


def _start(i: int, body: dict, address: tuple[str, int], host: str, path: str, timeout: float,
           keep_alive: bool, idle: list, headers: list | None = None) -> _Exchange:
    payload = json.dumps(body).encode()
    while idle:  # a kept-alive connection the server may have closed meanwhile: then the next, or a new one
        sock, conn = idle.pop()
        try:
            sock.setblocking(True)
            return _send(i, body, sock, conn, _request_bytes(conn, host, path, payload, True, headers), timeout, True)
        except OSError:
            sock.close()
    sock = socket.create_connection(address, timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    with contextlib.suppress(OSError):  # where the platform has no receive stamps, first_kernel_ns stays None
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    conn = h11.Connection(h11.CLIENT)
    return _send(i, body, sock, conn, _request_bytes(conn, host, path, payload, keep_alive, headers), timeout, False)


def _send(i: int, body: dict, sock: socket.socket, conn: h11.Connection, data: bytes, timeout: float,
          kept_alive: bool) -> _Exchange:
    sent = time.time_ns()
    sock.sendall(data)
    sock.setblocking(False)
    return _Exchange(i, sock, conn, sent, time.monotonic() + timeout, bool(body.get("stream")), kept_alive)
