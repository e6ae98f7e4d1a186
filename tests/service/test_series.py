"""Downsampling of metric series for charts (LTTB) and the spec differences of compared runs."""

from __future__ import annotations

import numpy as np
import pytest

from trainq.service.series import lttb, spec_differences


def reference_lttb(x: np.ndarray, y: np.ndarray, threshold: int) -> np.ndarray:
    """LTTB as Steinarsson's thesis writes it, one bucket at a time: the indexes it keeps."""
    n = len(x)
    keep = [0]
    edges = np.linspace(1, n - 1, threshold - 1).astype(np.int64)
    a = 0
    for i in range(threshold - 2):
        start, end = edges[i], max(edges[i + 1], edges[i] + 1)
        nxt_start, nxt_end = edges[i + 1], (edges[i + 2] if i + 2 < len(edges) else n)
        nxt_end = max(nxt_end, nxt_start + 1)
        cx, cy = x[nxt_start:nxt_end].mean(), y[nxt_start:nxt_end].mean()
        bx, by = x[start:end], y[start:end]
        area = np.abs((x[a] - cx) * (by - y[a]) - (x[a] - bx) * (cy - y[a]))
        a = start + int(area.argmax())
        keep.append(a)
    return np.array(keep + [n - 1])


@pytest.mark.parametrize("n, threshold", [(1000, 400), (100_000, 400), (401, 400), (10, 3), (5000, 7)])
def test_lttb_keeps_the_points_the_bucket_by_bucket_algorithm_keeps(n, threshold):
    rng = np.random.default_rng(n)
    x = np.arange(n, dtype=np.float64)
    y = np.cumsum(rng.standard_normal(n))  # a random walk, like a noisy loss curve
    kept_x, kept_y = lttb(x, y, threshold)
    expected = reference_lttb(x, y, threshold)
    assert len(kept_x) == threshold
    assert kept_x.astype(np.int64).tolist() == expected.tolist()
    assert np.array_equal(kept_y, y[expected])


def test_lttb_keeps_a_spike_and_both_ends_and_leaves_short_series_alone():
    y = np.zeros(10_000)
    y[6_543] = 50.0  # one spike in a flat line must survive downsampling to 100 points
    x = np.arange(len(y), dtype=np.float64)
    kept_x, kept_y = lttb(x, y, 100)
    assert kept_x[0] == 0 and kept_x[-1] == 9_999 and 6_543 in kept_x.tolist() and kept_y.max() == 50.0
    short = np.arange(5, dtype=np.float64)
    assert lttb(short, short, 10)[0] is short
    assert lttb(x, y, 2)[0].tolist() == [0, 9_999]


def test_spec_differences_name_the_paths_that_differ():
    a = {"name": "a", "optimizer": {"lr": 0.1, "type": "adam"}, "model": {"layers": [{"units": 8}]}}
    b = {"name": "b", "optimizer": {"lr": 0.01, "type": "adam"}, "model": {"layers": [{"units": 8}, {"units": 2}]}}
    assert spec_differences([a, b]) == [{"path": "model.layers", "values": ["units=8", "units=8 → units=2"]},
                                        {"path": "optimizer.lr", "values": [0.1, 0.01]}]
    c = {**a, "model": {"layers": [{"units": 16}]}}  # same length: the field that differs
    assert spec_differences([a, c]) == [{"path": "model.layers[0].units", "values": [8, 16]}]


def test_runs_of_other_architectures_differ_in_a_few_rows_not_in_every_default():
    from tests.specs import mlp, with_
    from trainq.models.spec import parse_spec

    dense = mlp(hidden=(64,), epochs=10)
    conv = with_(mlp(epochs=20), **{"dataset.as_images": True, "optimizer": {"type": "sgd", "lr": 0.05,
                                                                             "momentum": 0.9},
                                    "model.layers": [{"type": "conv2d", "out_channels": 8, "kernel": 3},
                                                     {"type": "activation", "fn": "relu"}, {"type": "flatten"},
                                                     {"type": "dense", "units": 10}]})
    stored = [parse_spec(s).model_dump(mode="json") for s in (dense, conv)]  # as the service keeps them
    rows = {d["path"]: d["values"] for d in spec_differences(stored)}
    assert set(rows) == {"dataset.as_images", "model.layers", "optimizer", "training.epochs"}, sorted(rows)
    assert rows["training.epochs"] == [10, 20]
    assert rows["model.layers"][0].startswith("dense units=64") and rows["model.layers"][1].startswith("conv2d")
    assert rows["optimizer"][0].startswith("adam lr=") and rows["optimizer"][1].startswith("sgd lr=0.05")
