"""A small HTTP load generator that leaves the cores to the server it measures.

On a two-core machine the client shares the CPU with the server under test, so the client must be cheap: each
process keeps several HTTP/1.1 keep-alive connections open and drives them from one `selectors` loop, with the
request bytes prebuilt and responses framed by Content-Length (about 30 µs of client CPU a request, against about
1 ms for `requests`, which took more of the two cores than the server it measured). Like wrk or ab, it counts
responses and their status; the server's answers are not otherwise checked here (the tests do that).
"""

from __future__ import annotations

import json
import multiprocessing as mp
import selectors
import socket
import time
from urllib.parse import urlsplit


def _request(method: str, url: str, headers: dict, body) -> bytes:
    parts = urlsplit(url)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    payload = b"" if body is None else json.dumps(body).encode()
    lines = [f"{method} {path} HTTP/1.1", f"Host: {parts.netloc}", "Connection: keep-alive",
             *(f"{k}: {v}" for k, v in headers.items())]
    if body is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {len(payload)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + payload


class _Connection:
    def __init__(self, address: tuple[str, int], index: int):
        self.address, self.index, self.sent = address, index, 0
        self.buffer = b""
        self.sock = socket.create_connection(address)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def response(self) -> int | None:
        """The status of a whole response at the front of the buffer (which is then consumed), or None."""
        head_end = self.buffer.find(b"\r\n\r\n")
        if head_end < 0:
            return None
        head = self.buffer[:head_end].decode("latin-1")
        length = 0
        for line in head.split("\r\n")[1:]:
            name, _, value = line.partition(":")
            if name.lower() == "content-length":
                length = int(value)
        end = head_end + 4 + length
        if len(self.buffer) < end:
            return None
        self.buffer = self.buffer[end:]
        return int(head.split(" ", 2)[1])


def _client(url, method: str, body_fn, headers: dict, seconds: float, connections: int, offset: int, out) -> None:
    def next_request(conn: _Connection) -> bytes:
        target = url(conn.index, conn.sent) if callable(url) else url
        return _request(method, target, headers, body_fn(conn.index, conn.sent) if body_fn else None)

    first = urlsplit(url(0, 0) if callable(url) else url)
    address = (first.hostname, first.port or 80)
    selector = selectors.DefaultSelector()
    ok = failed = 0
    deadline = time.monotonic() + seconds
    for i in range(connections):
        conn = _Connection(address, offset + i)
        conn.sock.sendall(next_request(conn))
        selector.register(conn.sock, selectors.EVENT_READ, conn)
    while time.monotonic() < deadline:
        for key, _ in selector.select(timeout=0.5):
            conn = key.data
            chunk = conn.sock.recv(65536)
            if not chunk:  # the server closed the connection: open another
                selector.unregister(conn.sock)
                conn.sock.close()
                conn = _Connection(address, conn.index)
                conn.sock.sendall(next_request(conn))
                selector.register(conn.sock, selectors.EVENT_READ, conn)
                continue
            conn.buffer += chunk
            status = conn.response()
            while status is not None:
                if status < 300:
                    ok += 1
                else:
                    failed += 1
                conn.sent += 1
                status = conn.response()
            if not conn.buffer:
                conn.sock.sendall(next_request(conn))
    for key in list(selector.get_map().values()):
        key.fileobj.close()
    out.put((ok, failed))


def rate(url, method: str = "GET", body_fn=None, headers: dict | None = None, seconds: float = 5.0,
         processes: int = 1, connections: int = 8) -> tuple[float, int]:
    """Requests per second that succeeded (status below 300), and how many failed. `url` and `body_fn` may be
    functions of (connection index, request number on it)."""
    out = mp.Queue()
    procs = [mp.Process(target=_client, args=(url, method, body_fn, headers or {}, seconds, connections,
                                              p * connections, out))
             for p in range(processes)]
    start = time.monotonic()
    for p in procs:
        p.start()
    results = [out.get() for _ in procs]
    for p in procs:
        p.join()
    elapsed = time.monotonic() - start
    return sum(r[0] for r in results) / elapsed, sum(r[1] for r in results)
