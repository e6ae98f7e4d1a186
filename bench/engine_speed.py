"""Engine training time against the tutorial DataLoader loop and the bare loop, same model, data and epochs.

Prints, for the digits MLP 64-64-10 (batch 64) and a small CNN on procedural images: the times of the three
loops (best of 3), the speed-up of the engine over the DataLoader loop, the engine's overhead over the bare
loop, and the test accuracy of each. Setup (data loading, model building) is timed apart from training.

And for the graphs of the examples (ResNet-8 on shapes, the LSTM on the adding problem): trainq against the same
network written by hand as an nn.Module, in a bare loop over device tensors and fed by a DataLoader (`--only graphs`).

Accuracy is compared over several training seeds (`--seeds`, default 10: initialization and shuffle; the data split
stays the same): one run's test accuracy on a few hundred test examples moves by a point or two with the shuffle
alone, so "same accuracy" is the mean over seeds of each loop, with the spread.
"""

from __future__ import annotations

import argparse
import statistics
import time

import common  # noqa: F401 - puts the repository on sys.path
import torch
import yaml

from bench.baseline import bare_loop, hand_loop, tutorial_loop
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


def accuracies(raw: dict, seeds: int, device: str) -> dict[str, list[float]]:
    """Test accuracy of each loop for training seeds 0..seeds-1."""
    out: dict[str, list[float]] = {"dataloader": [], "bare": [], "engine": []}
    for seed in range(seeds):
        spec = parse_spec({**raw, "training": {**raw["training"], "seed": seed}})
        out["dataloader"].append(tutorial_loop(spec, device)["test_accuracy"])
        out["bare"].append(bare_loop(spec, device)["test_accuracy"])
        out["engine"].append(fit(spec, device=device).metrics["test_accuracy"])
    return out


def spread(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {sd:.3f}"


def timed(run, *args, **kwargs) -> float:
    start = time.perf_counter()
    run(*args, **kwargs)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def measure(name: str, raw: dict, repeats: int, target: str, seeds: int, device: str) -> dict:
    spec = parse_spec(raw)
    # warm up: first calls pay for lazy imports, allocations (and CUDA's context and kernels)
    tutorial_loop(spec, device), bare_loop(spec, device), fit(spec, device=device)
    dl = min(timed(tutorial_loop, spec, device) for _ in range(repeats))
    bare = min(timed(bare_loop, spec, device) for _ in range(repeats))
    runs = [fit(spec, device=device) for _ in range(repeats)]
    fastest = min(runs, key=lambda r: r.train_seconds)
    engine = fastest.train_seconds + fastest.setup_seconds
    print(f"{name}: dataloader {dl:.2f}s, bare {bare:.2f}s, engine {engine:.2f}s = setup {fastest.setup_seconds:.2f}s "
          f"+ train {fastest.train_seconds:.2f}s")
    print(f"{name}: engine is {dl / engine:.2f}x faster than the DataLoader loop; engine / bare loop = {engine / bare:.2f}")
    acc = accuracies(raw, seeds, device)
    gap = statistics.mean(acc["engine"]) - statistics.mean(acc["dataloader"])
    print(f"{name}: test accuracy over {seeds} training seeds (mean ± sd): dataloader {spread(acc['dataloader'])}, "
          f"bare {spread(acc['bare'])}, engine {spread(acc['engine'])}; engine - dataloader = {100 * gap:+.1f} points")
    dl_note = bare_note = ratio_note = overhead_note = ""
    if device == "cpu":  # the baselines on one thread too: the engine picks its thread count, they take torch's
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        dl_one = min(timed(tutorial_loop, spec) for _ in range(repeats))
        bare_one = min(timed(bare_loop, spec) for _ in range(repeats))
        torch.set_num_threads(threads)
        print(f"{name}: with 1 thread forced on the baselines too: DataLoader {dl_one:.2f}s, bare {bare_one:.2f}s; "
              f"engine {dl_one / engine:.2f}x faster than that DataLoader loop, engine / that bare loop = "
              f"{engine / bare_one:.2f}")
        dl_note, bare_note = f" ({threads} threads); {dl_one:.2f} s on 1 thread", f"; {bare_one:.2f} s on 1 thread"
        ratio_note, overhead_note = f" ({dl_one / engine:.2f}x vs 1 thread)", f" ({engine / bare_one:.2f} vs 1 thread)"
    common.row(f"engine ÷ DataLoader loop, {name}", f"{dl:.2f} s{dl_note}; acc {spread(acc['dataloader'])}",
               f"{engine:.2f} s; acc {spread(acc['engine'])}",
               f"{dl / engine:.2f}x{ratio_note}; acc {100 * gap:+.1f} points", f"{target}, acc ± 1 point")
    common.row(f"engine ÷ bare loop, {name}", f"{bare:.2f} s{bare_note}", f"{engine:.2f} s",
               f"{engine / bare:.2f}{overhead_note}", "≤ 1.10")
    return {"dataloader": dl, "bare": bare, "engine": engine, "speedup": dl / engine, "overhead": engine / bare,
            "acc_dataloader": statistics.mean(acc["dataloader"]), "acc_engine": statistics.mean(acc["engine"])}


# The examples' graphs, on less data and fewer epochs (a benchmark measures steps, not accuracy)
RESNET8 = {**yaml.safe_load((common.ROOT / "examples" / "resnet8.yaml").read_text()), "name": "resnet8"}
RESNET8["dataset"] = {**RESNET8["dataset"], "n_samples": 1200, "seed": 0}
RESNET8["training"] = {"epochs": 3, "batch_size": 64, "seed": 0}
LSTM = {**yaml.safe_load((common.ROOT / "examples" / "adding-lstm.yaml").read_text()), "name": "lstm"}
LSTM["dataset"] = {**LSTM["dataset"], "n_samples": 2000, "seed": 0}
LSTM["training"] = {"epochs": 3, "batch_size": 64, "seed": 0}


def measure_graph(name: str, raw: dict, repeats: int, device: str) -> dict:
    """trainq's graph against the same network written by hand as an nn.Module: in a bare loop over device tensors
    (trainq's graph should cost nothing: <= 1.05x) and fed by a DataLoader (trainq >= 2x faster). Training and
    evaluation time alone on each side (trainq's train_seconds; the hand loops from their first step)."""
    spec = parse_spec(raw)
    fit(spec, device=device), hand_loop(spec, device), hand_loop(spec, device, loader=True)  # warm up
    engine = min(fit(spec, device=device).train_seconds for _ in range(repeats))
    bare = min(hand_loop(spec, device)["seconds"] for _ in range(repeats))
    loader = min(hand_loop(spec, device, loader=True)["seconds"] for _ in range(repeats))
    print(f"{name}: hand-written module with a DataLoader {loader:.2f}s, in a bare loop {bare:.2f}s, "
          f"trainq {engine:.2f}s; trainq / bare = {engine / bare:.2f}, DataLoader / trainq = {loader / engine:.2f}x")
    common.row(f"trainq graph ÷ hand-written nn.Module, bare loop, {name}", f"{bare:.2f} s", f"{engine:.2f} s",
               f"{engine / bare:.2f}", "≤ 1.05")
    common.row(f"trainq graph ÷ hand-written nn.Module with a DataLoader, {name}", f"{loader:.2f} s",
               f"{engine:.2f} s", f"{loader / engine:.2f}x", "≥ 2x")
    return {"bare": bare, "loader": loader, "engine": engine}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=10, help="training seeds the accuracies are averaged over")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda for the GPU figures")
    parser.add_argument("--only", choices=("stacks", "graphs"), help="one half: the straight stacks or the graphs")
    args = parser.parse_args()
    where = "CPU" if args.device == "cpu" else f"GPU ({torch.cuda.get_device_name(0)})"
    if args.only != "stacks":
        measure_graph(f"ResNet-8 on shapes 32x32x3, 1200 examples, batch 64, 3 epochs, {where}", RESNET8,
                      args.repeats, args.device)
        measure_graph(f"LSTM 32 on the adding problem T=50, 2000 examples, batch 64, 3 epochs, {where}", LSTM,
                      args.repeats, args.device)
    if args.only == "graphs":
        return
    targets = ("≥ 1.6x", "≥ 1.3x") if args.device == "cpu" else ("≥ 5x", "≥ 5x")
    measure(f"digits MLP 64-64-10, batch 64, 30 epochs, {where}", MLP, args.repeats, targets[0], args.seeds,
            args.device)
    measure(f"shapes CNN 16x16, batch 64, 8 epochs, {where}", CNN, args.repeats, targets[1], args.seeds, args.device)


if __name__ == "__main__":
    main()
