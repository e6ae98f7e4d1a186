"""The engine's GPU path, checked on a real GPU: each check prints its figures and PASS or FAIL.

Nothing here runs in the tests (CI has no GPU); run it where one is:

    python bench/gpu_path.py [--device cuda]

- precision `auto` picks bf16 on a chip that computes in it, and a digits MLP trained so reaches the accuracy of the
  same run in fp32 on the CPU;
- a run resumed on the GPU from an epoch's checkpoint replays the uninterrupted one (dropout draws from the GPU's
  generator, shuffles, the schedule);
- packed members on the GPU train as their trials alone on the GPU: an MLP with dropout and SGD with momentum, and a
  CNN with batch norm and Adam, per-epoch losses to 1e-4, in fp32 (which turns cuDNN's TF32 off: grouped and plain
  convolutions round differently in TF32). Adam's learning rates are those of the CPU tests (up to 0.004): at 0.008
  this CNN's rounding differences grow to 3e-4 in three epochs on the CPU as well;
- a deep ensemble on gap_sine trained on the GPU is distance-aware (spread at |x| in 2-3 at least 4x the in-region);
- a variational digits MLP trained on the GPU is accurate and calibrated, with its final measures (AUROC, ECE);
- a model trained on the GPU exports to ONNX from its checkpoint and onnxruntime agrees with torch.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import traceback
from pathlib import Path

import common  # noqa: F401 - puts the repository on sys.path
import torch

from bench.engine_speed import CNN, MLP
from tests.specs import with_
from trainq.models.engine import autocast_dtype, fit, pick_device
from trainq.models.packed import fit_pack
from trainq.models.spec import parse_spec

FAILED: list[str] = []


def check(name: str, ok: bool, figures: str) -> None:
    print(f"{'PASS' if ok else 'FAIL'} {name}: {figures}", flush=True)
    if not ok:
        FAILED.append(name)


def largest_gap(a: list[dict], b: list[dict], keys=("train_loss", "val_loss")) -> float:
    return max(abs(x[k] - y[k]) for x, y in zip(a, b) for k in keys)


def precision(device: str) -> None:
    spec = parse_spec(MLP)
    chosen = autocast_dtype(spec, pick_device(device))
    start = time.perf_counter()
    gpu = fit(spec, device=device)
    gpu_seconds = time.perf_counter() - start
    cpu = fit(parse_spec(with_(MLP, **{"training.precision": "fp32"})), device="cpu")
    acc, reference = gpu.metrics["test_accuracy"], cpu.metrics["test_accuracy"]
    check("precision auto", chosen == torch.bfloat16 and acc >= reference - 0.03 and acc >= 0.9,
          f"autocast {chosen}, test accuracy {acc:.4f} on {device} against {reference:.4f} in fp32 on the CPU "
          f"({gpu_seconds:.1f} s for 30 epochs)")


def resume(device: str) -> None:
    raw = with_(MLP, **{"training.epochs": 6, "training.batch_size": 32, "training.precision": "fp32",
                          "training.checkpoint_every_seconds": 0, "regularization": {"l2": 1e-4},
                          "schedule": {"type": "cosine"}})
    raw["model"]["layers"].insert(2, {"type": "dropout", "p": 0.2})
    spec = parse_spec(raw)
    blobs = []
    full = fit(spec, device=device, checkpoint_sink=lambda blob, info: blobs.append((blob, info)))
    at_three = next(blob for blob, info in blobs if info["epoch"] == 3)
    resumed = fit(spec, device=device, resume=at_three)
    gap = largest_gap(resumed.history, full.history)
    check("resume on the GPU", gap <= 1e-6 and resumed.best_epoch == full.best_epoch,
          f"largest per-epoch loss difference after resuming at epoch 3: {gap:.1e}")


def members(raw: dict, n: int, optimizer: dict) -> list:
    out = []
    for i in range(n):
        spec = with_(raw, optimizer={**optimizer, "lr": optimizer["lr"] * (1 + i)},
                       **{"training.seed": i, "training.precision": "fp32"})
        out.append(parse_spec(spec))
    return out


def packed(device: str) -> None:
    mlp = with_(MLP, **{"training.epochs": 5})
    mlp["model"]["layers"].insert(2, {"type": "dropout", "p": 0.2})
    cnn = with_(CNN, **{"training.epochs": 3, "dataset.n_samples": 1200})
    cnn["model"]["layers"][0]["bias"] = False  # batch norm removes it: its gradient would be rounding noise that
    cnn["model"]["layers"].insert(1, {"type": "batchnorm"})  # Adam scales up, different in any two ways of summing
    for name, raw, optimizer in (("MLP, dropout, SGD momentum", mlp, {"type": "momentum", "lr": 0.02, "momentum": 0.9}),
                                 ("CNN, batch norm, Adam", cnn, {"type": "adam", "lr": 0.001})):
        specs = members(raw, 4, optimizer)
        alone = [fit(spec, device=device) for spec in specs]
        together = fit_pack(specs, device=device)
        gap = max(largest_gap(a.history, m.result.history) for a, m in zip(alone, together))
        check(f"packed = alone, {name}", gap <= 1e-4,
              f"largest per-epoch train/val loss difference over 4 members: {gap:.1e}")


def ensemble(device: str) -> None:
    raw = with_({}, **{"name": "gap-sine-ensemble", "dataset": {"name": "gap_sine", "n_samples": 1000,
                                                                   "noise": 0.1, "seed": 0},
                         "loss": {"type": "mse"}, "optimizer": {"type": "adam", "lr": 0.01},
                         "training": {"epochs": 100, "batch_size": 32, "seed": 0},
                         "inference": {"method": "ensemble", "members": 5}})
    raw["model"] = {"layers": [{"type": "dense", "units": 100}, {"type": "activation", "fn": "relu"},
                               {"type": "dense", "units": 100}, {"type": "activation", "fn": "relu"},
                               {"type": "dense", "units": 1}]}
    start = time.perf_counter()
    result = fit(parse_spec(raw), device=device)
    m = result.metrics
    ratio = m["test_std_far"] / m["test_std_in"]
    check("ensemble on the GPU", ratio >= 4 and 0.88 <= m["test_coverage95_in"] <= 1.0,
          f"spread far / in-region {ratio:.1f}, in-region coverage95 {m['test_coverage95_in']:.3f}, "
          f"{time.perf_counter() - start:.1f} s")


def bayes(device: str) -> None:
    raw = {"name": "digits-bnn", "dataset": {"name": "digits", "seed": 0},
           "model": {"layers": [{"type": "dense_bayes", "units": 128}, {"type": "activation", "fn": "relu"},
                                {"type": "dense_bayes", "units": 10}]},
           "loss": {"type": "cross_entropy"}, "optimizer": {"type": "adam", "lr": 0.002},
           "training": {"epochs": 20, "batch_size": 32, "seed": 0},
           "inference": {"method": "variational", "samples": 50, "val_samples": 10}}
    m = fit(parse_spec(raw), device=device).metrics
    check("variational network on the GPU", m["test_accuracy"] >= 0.9 and m["test_ece"] <= 0.06
          and m["test_entropy_auroc"] >= 0.7,
          f"test accuracy {m['test_accuracy']:.3f}, ECE {m['test_ece']:.3f}, NLL {m['test_nll']:.3f}, "
          f"AUROC of entropy for the misclassified {m['test_entropy_auroc']:.2f}")


def export(device: str) -> None:
    from trainq.models.export import export_onnx, state_from_checkpoint

    blobs = []
    fit(parse_spec(with_(MLP, **{"training.epochs": 5})), device=device,
        checkpoint_sink=lambda blob, info: blobs.append(blob))
    state = state_from_checkpoint(blobs[-1])
    with tempfile.TemporaryDirectory() as folder:
        exported = export_onnx(state, Path(folder) / "model.onnx")
    worst = max(exported.checked.values())
    check("ONNX from a GPU-trained checkpoint", worst <= 1e-4,
          f"onnxruntime against torch at batch sizes {sorted(exported.checked)}: largest difference {worst:.1e}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    if args.device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise SystemExit("no GPU here: torch.cuda.is_available() is False")
        print(f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}, "
              f"compute capability {torch.cuda.get_device_capability(0)}", flush=True)
    for step in (precision, resume, packed, ensemble, bayes, export):
        try:
            step(args.device)
        except Exception as exc:  # one broken check must not hide the others' figures
            traceback.print_exc()
            check(step.__name__, False, f"{type(exc).__name__}: {exc}")
    print("all passed" if not FAILED else f"failed: {', '.join(FAILED)}")
    raise SystemExit(1 if FAILED else 0)


if __name__ == "__main__":
    main()
