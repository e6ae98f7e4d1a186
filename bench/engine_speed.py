"""Engine training time against the tutorial DataLoader loop and the bare loop, same model, data and epochs.

Prints, for the digits MLP 64-64-10 (batch 64) and a small CNN on procedural images: the times of the three
loops (best of 3), the speed-up of the engine over the DataLoader loop, the engine's overhead over the bare
loop, and the test accuracy of each. Setup (data loading, model building) is timed apart from training.
"""

from __future__ import annotations

import argparse
import time

import common  # noqa: F401 - puts the repository on sys.path
import torch

from bench.baseline import bare_loop, tutorial_loop
from trainq.models.engine import fit
from trainq.models.spec import parse_spec

MLP = {"name": "digits-mlp", "dataset": {"name": "digits", "seed": 0},
       "model": {"init": "he", "layers": [{"type": "dense", "units": 64}, {"type": "activation", "fn": "relu"},
                                          {"type": "dense", "units": 64}, {"type": "activation", "fn": "relu"},
                                          {"type": "dense", "units": 10}]},
       "loss": {"type": "cross_entropy"}, "optimizer": {"type": "adam", "lr": 0.001},
       "training": {"epochs": 30, "batch_size": 64, "seed": 0}}

CNN = {"name": "shapes-cnn", "dataset": {"name": "shapes", "n_samples": 3000, "image_size": 16, "classes": 6,
                                         "noise": 0.2, "seed": 0},
       "model": {"init": "he", "layers": [{"type": "conv2d", "out_channels": 8, "padding": "same"},
                                          {"type": "activation", "fn": "relu"}, {"type": "pool"},
                                          {"type": "conv2d", "out_channels": 16, "padding": "same"},
                                          {"type": "activation", "fn": "relu"}, {"type": "pool"},
                                          {"type": "flatten"}, {"type": "dense", "units": 6}]},
       "loss": {"type": "cross_entropy"}, "optimizer": {"type": "adam", "lr": 0.003},
       "training": {"epochs": 8, "batch_size": 64, "seed": 0}}


def measure(name: str, raw: dict, repeats: int, target: str) -> dict:
    spec = parse_spec(raw)
    tutorial_loop(spec), bare_loop(spec), fit(spec)  # warm up: first calls pay for lazy imports and allocations
    results = {}
    for label, run in (("dataloader", tutorial_loop), ("bare", bare_loop)):
        best, accuracy = float("inf"), None
        for _ in range(repeats):
            start = time.perf_counter()
            accuracy = run(spec)["test_accuracy"]
            best = min(best, time.perf_counter() - start)
        results[label] = (best, accuracy)
    best_train, best_setup, accuracy = float("inf"), 0.0, None
    for _ in range(repeats):
        r = fit(spec)
        if r.train_seconds < best_train:
            best_train, best_setup, accuracy = r.train_seconds, r.setup_seconds, r.metrics["test_accuracy"]
    results["engine"] = (best_train + best_setup, accuracy)
    dl, bare, engine = results["dataloader"][0], results["bare"][0], results["engine"][0]
    print(f"{name}: dataloader {dl:.2f}s (acc {results['dataloader'][1]:.3f}), bare {bare:.2f}s "
          f"(acc {results['bare'][1]:.3f}), engine {engine:.2f}s = setup {best_setup:.2f}s + train {best_train:.2f}s "
          f"(acc {accuracy:.3f})")
    default_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    dl_one = min(_timed(tutorial_loop, spec) for _ in range(repeats))
    bare_one = min(_timed(bare_loop, spec) for _ in range(repeats))
    torch.set_num_threads(default_threads)
    print(f"{name}: engine is {dl / engine:.2f}x faster than the DataLoader loop; "
          f"engine / bare loop = {engine / bare:.2f}")
    print(f"{name}: with 1 thread forced on the baselines too: DataLoader {dl_one:.2f}s, bare {bare_one:.2f}s; "
          f"engine {dl_one / engine:.2f}x faster than that DataLoader loop, engine / that bare loop = "
          f"{engine / bare_one:.2f}")
    common.row(f"engine ÷ DataLoader loop, {name}", f"{dl:.2f} s ({default_threads} threads, acc "
               f"{results['dataloader'][1]:.3f}); {dl_one:.2f} s on 1 thread", f"{engine:.2f} s (acc {accuracy:.3f})",
               f"{dl / engine:.2f}x ({dl_one / engine:.2f}x vs 1 thread)", target)
    common.row(f"engine ÷ bare loop, {name}", f"{bare:.2f} s; {bare_one:.2f} s on 1 thread", f"{engine:.2f} s",
               f"{engine / bare:.2f} ({engine / bare_one:.2f} vs 1 thread)", "≤ 1.10")
    return {"dataloader": dl, "bare": bare, "engine": engine, "speedup": dl / engine, "overhead": engine / bare,
            "acc_dataloader": results["dataloader"][1], "acc_engine": accuracy}


def _timed(run, spec) -> float:
    start = time.perf_counter()
    run(spec)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    measure("digits MLP 64-64-10, batch 64, 30 epochs, CPU", MLP, args.repeats, "≥ 1.6x")
    measure("shapes CNN 16x16, batch 64, 8 epochs, CPU", CNN, args.repeats, "≥ 1.3x")


if __name__ == "__main__":
    main()
