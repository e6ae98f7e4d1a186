"""Prediction speed of a registered digits MLP through the service (onnxruntime, auth, the registry lookup, input
checks) against a bare Flask endpoint served by the same gunicorn in the same run.

A worker trains the model and exports it; then a gunicorn with the service's own options serves the trainq app plus
one bare route that parses the same JSON body and answers a JSON of the same shape, with no auth, no lookup and no
model. Single-row requests over one keep-alive connection (p50 and p99 of 1,000 after a warm-up), then 1,000-row
batches (rows per second over 30 requests)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import common
import numpy as np
import requests
from stack import running_stack

from tests.integration.stack import free_port, wait_until

SPEC = {"name": "digits-mlp", "dataset": {"name": "digits", "seed": 0},
        "model": {"init": "he", "layers": [{"type": "dense", "units": 128}, {"type": "activation", "fn": "relu"},
                                           {"type": "dense", "units": 10}]},
        "loss": {"type": "cross_entropy"}, "optimizer": {"type": "adam", "lr": 0.001},
        "training": {"epochs": 20, "batch_size": 64, "seed": 0}, "register_as": "digits"}


def serve(port: int) -> None:
    """The bench's gunicorn: the service's options, the trainq app, and the bare route."""
    from flask import jsonify, request

    from trainq.service.server import Server, options
    from trainq.settings import Settings

    class WithBare(Server):
        def load(self):
            app = super().load()

            @app.post("/bench/bare")
            def bare():
                body = request.get_json()
                rows = body["inputs"][0]["shape"][0]
                return jsonify({"model_name": "bare", "model_version": "1",
                                "outputs": [{"name": "label", "shape": [rows], "datatype": "INT64",
                                             "data": [0] * rows}]})

            return app

    WithBare(Settings(), options("127.0.0.1", port, 2, 8)).run()


def up(url: str) -> bool:
    try:
        return requests.get(url, timeout=1).ok
    except requests.RequestException:
        return False


def binary_request(rows: np.ndarray) -> tuple[bytes, dict]:
    """A request in the binary data extension, as tritonclient sends one by default: the JSON part, then the raw
    float32 rows; the outputs asked back as raw bytes too."""
    head = json.dumps({"inputs": [{"name": "x", "shape": list(rows.shape), "datatype": "FP32",
                                   "parameters": {"binary_data_size": rows.nbytes}}],
                       "parameters": {"binary_data_output": True}}).encode()
    return head + rows.astype("<f4").tobytes(), {"Inference-Header-Content-Length": str(len(head)),
                                                  "Content-Type": "application/octet-stream"}


def timed(http: requests.Session, url: str, body: str | bytes, count: int, headers: dict | None = None
          ) -> list[float]:
    out = []
    for _ in range(count):
        start = time.perf_counter()
        answer = http.post(url, data=body, headers=headers or {"Content-Type": "application/json"}, timeout=30)
        out.append(time.perf_counter() - start)
        assert answer.status_code == 200, answer.text
    return out


def main() -> None:
    from trainq.models.engine import build
    from trainq.models.export import raw_rows
    from trainq.models.spec import parse_spec

    with running_stack() as stack:
        job = stack.wait(stack.submit(SPEC), timeout=300)
        assert job["status"] == "succeeded", stack.logs()
        wait_until(lambda: stack.get("/api/v1/models/digits/versions/1").get("state") == "ready", 180, "export")
        port = free_port()
        server = subprocess.Popen([sys.executable, __file__, "--serve", str(port)], env=stack.env,
                                  start_new_session=True)
        try:
            base = f"http://127.0.0.1:{port}"
            wait_until(lambda: up(f"{base}/v2/health/ready"), 60, "the bench's server")
            http = requests.Session()
            http.headers["Authorization"] = stack.http.headers["Authorization"]
            x = raw_rows(build(parse_spec({k: v for k, v in SPEC.items() if k != "register_as"}), device="cpu"),
                         "test")
            one = json.dumps({"inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP32",
                                          "data": x[0].tolist()}]})
            rows = np.resize(x, (1000, 64))
            batch = json.dumps({"inputs": [{"name": "x", "shape": [1000, 64], "datatype": "FP32",
                                            "data": rows.ravel().tolist()}]})
            infer, bare = f"{base}/v2/models/digits/infer", f"{base}/bench/bare"
            for url in (infer, bare):
                timed(http, url, one, 200)  # warm-up: both gunicorn processes, the session cache
            model_times, bare_times = [], []
            for _ in range(10):  # interleaved, so a noisy moment falls on both
                model_times += timed(http, infer, one, 100)
                bare_times += timed(http, bare, one, 100)
            timed(http, infer, batch, 3)
            batch_seconds = min(sum(timed(http, infer, batch, 10)) for _ in range(3)) / 10
            bare_batch = min(sum(timed(http, bare, batch, 10)) for _ in range(3)) / 10
            raw, headers = binary_request(rows)
            timed(http, infer, raw, 3, headers)
            binary_seconds = min(sum(timed(http, infer, raw, 10, headers)) for _ in range(3)) / 10
        finally:
            server.terminate()
            server.wait(timeout=30)
    p50, p99 = common.percentile(model_times, 50) * 1000, common.percentile(model_times, 99) * 1000
    b50, b99 = common.percentile(bare_times, 50) * 1000, common.percentile(bare_times, 99) * 1000
    rate = 1000 / batch_seconds
    print(f"single row: v2 infer p50 {p50:.2f} ms p99 {p99:.2f} ms; bare endpoint p50 {b50:.2f} ms p99 {b99:.2f} ms")
    print(f"1,000-row batches: {batch_seconds * 1000:.1f} ms a request = {rate:,.0f} rows/s "
          f"(the bare endpoint parsing the same body: {bare_batch * 1000:.1f} ms)")
    common.row("single-row v2 predict p50 ÷ bare Flask endpoint, same gunicorn", f"{b50:.2f} ms (p99 {b99:.2f})",
               f"{p50:.2f} ms (p99 {p99:.2f})", f"{p50 / b50:.2f}", "≤ 3")
    binary_rate = 1000 / binary_seconds
    print(f"1,000-row batches in the binary data extension (tritonclient's default): {binary_seconds * 1000:.1f} ms "
          f"a request = {binary_rate:,.0f} rows/s")
    common.row("1,000-row v2 batches, digits MLP, JSON: rows/s", f"bare parse {1000 / bare_batch:,.0f} rows/s",
               f"{rate:,.0f} rows/s", f"{rate / (1000 / bare_batch):.2f} of bare", "≥ 100,000 rows/s")
    common.row("1,000-row v2 batches, digits MLP, binary tensors: rows/s", f"bare JSON parse {1000 / bare_batch:,.0f}"
               " rows/s", f"{binary_rate:,.0f} rows/s", f"{binary_rate / (1000 / bare_batch):.2f} of bare",
               "≥ 100,000 rows/s")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        serve(int(sys.argv[2]))
    else:
        main()
