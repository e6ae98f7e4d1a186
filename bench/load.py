"""A small HTTP load generator: client processes with threads, each request on a kept-alive connection."""

from __future__ import annotations

import multiprocessing as mp
import threading
import time

import requests


def _client(url: str, method: str, body_fn, headers: dict, seconds: float, threads: int, out) -> None:
    counts = [0] * threads
    errors = [0] * threads
    deadline = time.monotonic() + seconds

    def work(i: int) -> None:
        session = requests.Session()
        session.headers.update(headers)
        n = 0
        while time.monotonic() < deadline:
            target = url(i, n) if callable(url) else url
            answer = session.request(method, target, json=body_fn(i, n) if body_fn else None, timeout=30)
            if answer.status_code < 300:
                counts[i] += 1
            else:
                errors[i] += 1
            n += 1

    pool = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    out.put((sum(counts), sum(errors)))


def rate(url, method: str = "GET", body_fn=None, headers: dict | None = None, seconds: float = 5.0,
         processes: int = 2, threads: int = 4) -> tuple[float, int]:
    """Requests per second that succeeded, and how many failed."""
    out = mp.Queue()
    procs = [mp.Process(target=_client, args=(url, method, body_fn, headers or {}, seconds, threads, out))
             for _ in range(processes)]
    start = time.monotonic()
    for p in procs:
        p.start()
    results = [out.get() for _ in procs]
    for p in procs:
        p.join()
    elapsed = time.monotonic() - start
    return sum(r[0] for r in results) / elapsed, sum(r[1] for r in results)
