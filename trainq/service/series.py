"""Metric series for charts: downsampled on the server (LTTB) so that no page ever ships millions of points, and
spec differences for comparing runs."""

from __future__ import annotations

from typing import Any

import numpy as np


def lttb(x: np.ndarray, y: np.ndarray, threshold: int) -> tuple[np.ndarray, np.ndarray]:
    """Largest-Triangle-Three-Buckets (Steinarsson 2013): keep `threshold` points that preserve the shape of the
    series, always including the first and the last. Series at or under the threshold come back unchanged.

    Each bucket keeps the point making the largest triangle with the point kept in the bucket before and the mean of
    the bucket after. Only that chain is sequential: the means, and the area written as |xa * P + ya * Q + R| (P, Q,
    R per point of a bucket, xa, ya the previous point kept), are computed for all buckets at once, so the loop does
    a few float operations per point instead of several numpy calls per bucket."""
    n = len(x)
    if threshold >= n or threshold < 3:
        return (x, y) if threshold >= n else (x[[0, -1]], y[[0, -1]])
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    # threshold-2 buckets tiling [1, n - 1); with n > threshold the step is over 1, so every bucket has a point
    edges = np.linspace(1, n - 1, threshold - 1).astype(np.int64)
    starts, ends = edges[:-1], edges[1:]
    next_ends = np.append(edges[2:], n)  # the bucket after each; the last bucket's is the last point
    sum_x, sum_y = np.concatenate(([0.0], np.cumsum(x))), np.concatenate(([0.0], np.cumsum(y)))
    count = next_ends - ends
    cx = (sum_x[next_ends] - sum_x[ends]) / count
    cy = (sum_y[next_ends] - sum_y[ends]) / count
    sizes = ends - starts
    owner = np.repeat(np.arange(len(starts)), sizes)  # the bucket of each candidate point, in order
    bx, by = x[1:n - 1], y[1:n - 1]  # the candidates: every point but the first and the last, bucket by bucket
    p, q, r = (by - cy[owner]).tolist(), (cx[owner] - bx).tolist(), (bx * cy[owner] - cx[owner] * by).tolist()
    keep = [0]
    xa, ya = float(x[0]), float(y[0])
    xs, ys = x.tolist(), y.tolist()
    lo = 0
    for size in sizes.tolist():
        best, pick = -1.0, lo
        for j in range(lo, lo + size):
            area = abs(xa * p[j] + ya * q[j] + r[j])
            if area > best:
                best, pick = area, j
        chosen = pick + 1  # candidates are points 1 .. n-2, in order
        keep.append(chosen)
        xa, ya = xs[chosen], ys[chosen]
        lo += size
    keep.append(n - 1)
    index = np.asarray(keep, dtype=np.int64)
    return x[index], y[index]


def flatten(spec: Any, prefix: str = "") -> dict[str, Any]:
    """A spec as {dotted.path[index]: leaf value}."""
    out: dict[str, Any] = {}
    if isinstance(spec, dict):
        for key, value in spec.items():
            out.update(flatten(value, f"{prefix}.{key}" if prefix else key))
    elif isinstance(spec, list) and spec:
        for i, value in enumerate(spec):
            out.update(flatten(value, f"{prefix}[{i}]"))
    else:
        out[prefix] = spec
    return out


def spec_differences(specs: list[dict[str, Any]], ignore: tuple[str, ...] = ("name",)) -> list[dict[str, Any]]:
    """The parts of the specs that are not the same in every one, each with every spec's value (None where it lacks
    it). A part whose kind differs (a layer or optimizer of another `type`, a list of another length) is one row
    with a short summary, not a row for each field of either kind: an MLP against a CNN differs in its layers, not in
    every default of every layer type."""
    out: list[dict[str, Any]] = []
    _differ([{k: v for k, v in s.items() if k not in ignore} for s in specs], "", out)
    return out


def _differ(values: list[Any], path: str, out: list[dict[str, Any]]) -> None:
    if all(v == values[0] for v in values[1:]):
        return
    if all(isinstance(v, dict) for v in values):
        if len({v.get("type") for v in values}) == 1:
            for key in sorted({k for v in values for k in v}):
                _differ([v.get(key) for v in values], f"{path}.{key}" if path else key, out)
            return
    elif all(isinstance(v, list) for v in values) and len({len(v) for v in values}) == 1:
        for i in range(len(values[0])):
            _differ([v[i] for v in values], f"{path}[{i}]", out)
        return
    out.append({"path": path, "values": [summary(v) for v in values]})


def summary(value: Any, width: int = 80) -> Any:
    """A spec part in a line: `dense units=64`, a list of layers as `dense units=64 → activation fn=relu → ...`."""
    if isinstance(value, list) and all(isinstance(v, dict) for v in value):  # layers: every one, however many
        return " → ".join(str(summary(v, 200)) for v in value)
    elif isinstance(value, dict):
        fields = [f"{k}={json_text(v)}" for k, v in value.items() if k != "type" and v is not None]
        text = " ".join(([str(value["type"])] if "type" in value else []) + fields)
    else:
        return value
    return text if len(text) <= width else text[:width - 1] + "…"


def filesize(size: float) -> str:
    """1536 -> '1.5 KiB': what a page and the command line show of a file's size."""
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:,.0f} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    return ""


def json_text(value: Any) -> str:
    import json

    return json.dumps(value, separators=(",", ":")) if isinstance(value, (dict, list)) else str(value)
