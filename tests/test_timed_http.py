"""The one-thread timed client against a small local HTTP server (no SGLang): what it stamps, and the
errors it raises instead of hanging or returning half a response."""
from __future__ import annotations

import json
import socket
import sys
import threading
import time

import pytest

from sglang_tracing.app.timed_http import HTTPStatusError, post_json

GAP_S = 0.05


def _serve(handler) -> tuple[str, list[dict]]:
    """A listening socket answering each connection with ``handler(conn, body)``; returns (url, log)."""
    server = socket.create_server(("127.0.0.1", 0))
    log: list[dict] = []
    accepted: list = []

    def loop():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=one, args=(conn,), daemon=True).start()

    def one(conn):
        accepted.append(conn)
        data = b""
        while True:
            while b"\r\n\r\n" not in data:
                more = conn.recv(65536)
                if not more:
                    conn.close()
                    return
                data += more
            head, _, rest = data.partition(b"\r\n\r\n")
            length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length")))
            while len(rest) < length:
                rest += conn.recv(65536)
            body, data = rest[:length], rest[length:]
            log.append({"received_ns": time.time_ns(), "body": json.loads(body), "conn": len(accepted)})
            handler(conn, log[-1])
            if b"connection: close" in head.lower():
                conn.close()
                return

    threading.Thread(target=loop, daemon=True).start()
    return f"http://127.0.0.1:{server.getsockname()[1]}/generate", log


def _stream(conn, req):
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
    req["chunks_ns"] = []
    for i in range(3):
        time.sleep(GAP_S)
        line = f"data: {json.dumps({'i': i, 'meta_info': {'id': req['body']['rid']}})}\n\n".encode()
        req["chunks_ns"].append(time.time_ns())
        conn.sendall(b"%x\r\n%s\r\n" % (len(line), line))
    done = b"data: [DONE]\n\n"
    conn.sendall(b"%x\r\n%s\r\n0\r\n\r\n" % (len(done), done))


def test_streamed_chunks_stamped_as_they_arrive():
    url, log = _serve(_stream)
    out = post_json(url, [{"rid": f"r{i}", "stream": True} for i in range(4)], concurrency=4, timeout=10)
    by_rid = {r["body"]["rid"]: r for r in log}
    for resp in out:
        c, server = resp["client"], by_rid[resp["meta_info"]["id"]]
        assert resp["i"] == 2 and len(c["chunk_ns"]) == 3  # the last data line, [DONE] not counted
        assert c["sent_ns"] <= server["received_ns"]
        for sent, seen in zip(server["chunks_ns"], c["chunk_ns"]):
            assert sent <= seen
        # the kernel's receive stamp of the read that held the first chunk (or of the headers before it,
        # when both waited unread): after the request was sent, not after the client read it
        if sys.platform.startswith("linux"):
            assert c["sent_ns"] < c["first_kernel_ns"] <= c["chunk_ns"][0]
        gaps = [b - a for a, b in zip(c["chunk_ns"], c["chunk_ns"][1:])]
        assert all(g >= GAP_S * 1e9 * 0.5 for g in gaps)  # one stamp per chunk, not all at the end
    # four in flight at once from one thread: all four were received before any finished streaming
    assert max(r["received_ns"] for r in log) < min(r["chunks_ns"][-1] for r in log)


def test_whole_response_and_errors():
    def answer(conn, req):
        kind = req["body"]["kind"]
        if kind == "ok":
            body = json.dumps({"text": "x"}).encode()
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        elif kind == "error":
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 3\r\n\r\nbad")
        elif kind == "cut":
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
        # "silent": close without a response

    url, _ = _serve(answer)
    ok = post_json(url, [{"kind": "ok"}])[0]
    assert ok["text"] == "x" and ok["client"]["sent_ns"] <= ok["client"]["chunk_ns"][0] <= ok["client"]["done_ns"]
    with pytest.raises(HTTPStatusError, match="HTTP 400: bad"):
        post_json(url, [{"kind": "error"}])
    with pytest.raises(ConnectionError, match="broken HTTP response"):
        post_json(url, [{"kind": "cut"}])
    with pytest.raises(ConnectionError, match="without a response"):
        post_json(url, [{"kind": "silent"}])


def test_timeout_when_nothing_comes():
    url, _ = _serve(lambda conn, req: time.sleep(1.5))  # then closes without a response
    with pytest.raises(TimeoutError):  # raised first: not the ConnectionError the close would give
        post_json(url, [{"kind": "slow"}], timeout=0.5)


def test_keep_alive_reuses_connections():
    url, log = _serve(_stream)
    out = post_json(url, [{"rid": f"k{i}", "stream": True} for i in range(6)], concurrency=2, timeout=10,
                    keep_alive=True)
    assert len({r["conn"] for r in log}) == 2  # two connections carried all six requests
    assert [o["client"]["kept_alive"] for o in out].count(True) == 4
    assert all(len(o["client"]["chunk_ns"]) == 3 for o in out)
