"""Run in a process that has trainq-gated installed: plan, train, resume and export a model with a `gated` layer, and
print what the test compares as JSON (the test's own process does not have the package, as a worker may not)."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from trainq.models.engine import build, fit
from trainq.models.export import export_onnx, raw_rows
from trainq.models.spec import parse_spec, plan

SPEC = {
    "name": "gated", "dataset": {"name": "digits", "seed": 0},
    "model": {"layers": [
        {"type": "dense", "units": 32},
        {"type": "gated", "units": 32, "id": "gate"},
        {"type": "add", "from": ["gate", "in"]},  # 64 pixels projected onto 32: the plugin inside a graph
        {"type": "gated", "units": 10}]},
    "loss": {"type": "cross_entropy"}, "optimizer": {"type": "adam", "lr": 0.01},
    "training": {"epochs": 4, "batch_size": 64, "seed": 0, "checkpoint_every_seconds": 0}}


def main(out: Path) -> dict:
    spec = parse_spec(SPEC)
    planned = plan(spec)
    blobs = []
    full = fit(spec, checkpoint_sink=lambda blob, info: blobs.append((blob, info)))
    resumed = fit(spec, resume=next(blob for blob, info in blobs if info["epoch"] == 2))
    state = build(spec, device="cpu", resume=blobs[-1][0])
    session = ort.InferenceSession(str(export_onnx(state, out / "model.onnx").path), providers=["CPUExecutionProvider"])
    state.model.eval()
    with torch.no_grad():
        probabilities = torch.softmax(state.model(state.data.val.features()), 1).numpy()
    onnx = session.run(None, {"x": raw_rows(state, "val")})[-1]
    modules = [m for m in state.model.modules() if type(m).__name__ == "Gated"]
    return {"planned": [[layer.type, list(layer.output_shape), layer.params] for layer in planned.layers],
            "params": planned.params, "torch_params": sum(p.numel() for p in state.model.parameters()),
            "gated_modules": [sum(p.numel() for p in m.parameters()) for m in modules],
            "metrics": full.metrics, "resumed_equal": resumed.history == full.history,
            "onnx_difference": float(np.abs(onnx - probabilities).max())}


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as folder:
        json.dump(main(Path(folder)), sys.stdout)
