"""Metric series for charts: downsampled on the server (LTTB) so that no page ever ships millions of points, and
spec differences for comparing runs."""

from __future__ import annotations

from typing import Any

import numpy as np


def lttb(x: np.ndarray, y: np.ndarray, threshold: int) -> tuple[np.ndarray, np.ndarray]:
    """Largest-Triangle-Three-Buckets (Steinarsson 2013): keep `threshold` points that preserve the shape of the
    series, always including the first and the last. Series at or under the threshold come back unchanged."""
    n = len(x)
    if threshold >= n or threshold < 3:
        return (x, y) if threshold >= n else (x[[0, -1]], y[[0, -1]])
    keep = np.empty(threshold, dtype=np.int64)
    keep[0], keep[-1] = 0, n - 1
    edges = np.linspace(1, n - 1, threshold - 1).astype(np.int64)  # threshold-2 buckets between first and last
    a = 0
    for i in range(threshold - 2):
        start, end = edges[i], max(edges[i + 1], edges[i] + 1)
        nxt_start, nxt_end = edges[i + 1], (edges[i + 2] if i + 2 < len(edges) else n)
        if nxt_end <= nxt_start:
            nxt_end = nxt_start + 1
        cx, cy = x[nxt_start:nxt_end].mean(), y[nxt_start:nxt_end].mean()
        bx, by = x[start:end], y[start:end]
        area = np.abs((x[a] - cx) * (by - y[a]) - (x[a] - bx) * (cy - y[a]))
        a = start + int(area.argmax())
        keep[i + 1] = a
    return x[keep], y[keep]


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
    """The fields whose values are not the same in every spec, with each spec's value (None where it lacks it)."""
    flat = [flatten(s) for s in specs]
    paths = sorted({p for f in flat for p in f} - set(ignore))
    diff = []
    for path in paths:
        values = [f.get(path) for f in flat]
        if any(v != values[0] for v in values[1:]):
            diff.append({"path": path, "values": values})
    return diff
