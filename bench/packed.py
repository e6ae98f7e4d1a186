"""Packed trials against the same trials trained one after another by the engine, in one run.

Members differ in learning rate and seed (as a sweep's trials do). Prints, for the digits MLP 64-64-10 (batch 64,
Adam, 30 epochs) at N = 8 and N = 32, and for the small CNN of engine_speed.py at N = 8: the sequential time, the
packed time (best of `--repeats`, the two taking turns), their ratio against the target, and whether `pack: auto`
would pack it (it packs only where packing was measured to pay: see trainq.models.packing.worth_packing), and the
crossover rows: where packing stops paying on this CPU for wider MLPs and CNNs, and that `auto` does not pack there.
Also checks the members' final test losses against the sequential runs' (they train the same trials; the difference
is float rounding).

    python bench/packed.py [--device cuda] [--repeats 2]
"""

from __future__ import annotations

import argparse
import copy

import common  # noqa: F401 - puts the repository on sys.path
import torch

from bench.common import best_of_each, row
from bench.engine_speed import CNN, MLP
from trainq.models.engine import fit
from trainq.models.packed import fit_pack
from trainq.models.packing import worth_packing
from trainq.models.spec import parse_spec


def trials(raw: dict, n: int) -> list:
    """n trials: learning rates spread log-uniformly over a decade and a half around the base's, one seed each."""
    out = []
    base = raw["optimizer"]["lr"]
    for i in range(n):
        spec = copy.deepcopy(raw)
        spec["optimizer"]["lr"] = base * 10 ** (-0.75 + 1.5 * i / max(1, n - 1))
        spec["training"]["seed"] = i
        out.append(parse_spec(spec))
    return out


def measure(name: str, raw: dict, n: int, target: float | None, device: str, repeats: int) -> None:
    specs = trials(raw, n)
    sequential_results = []

    def sequential():
        sequential_results[:] = [fit(spec, device=device) for spec in specs]

    packed_members = []

    def packed():
        packed_members[:] = fit_pack(specs, device=device)

    sequential(), packed()  # warm-up: lazy imports, allocator, (CUDA context and kernels)
    seq, pk = best_of_each([sequential, packed], repeats)
    if torch.cuda.is_available() and device.startswith("cuda"):
        torch.cuda.synchronize()
    gap = max(abs(a.metrics["test_loss"] - m.result.metrics["test_loss"])
              for a, m in zip(sequential_results, packed_members))
    ratio = pk / seq
    verdict = "" if target is None else (" PASS" if ratio <= target else " FAIL")
    auto = "packs" if worth_packing(specs[0], device) else "does not pack"
    print(f"{name} N={n} on {device}: sequential {seq:.2f}s, packed {pk:.2f}s, ratio {ratio:.3f}"
          f"{'' if target is None else f' (target <= {target})'}{verdict}; auto {auto}; "
          f"largest test-loss difference {gap:.1e}")
    row(f"{name}, {n} trials, {device}: packed / one after another", f"{seq:.2f} s", f"{pk:.2f} s", f"{ratio:.2f}x",
        "report" if target is None else f"<= {target}x")


def crossover(device: str) -> None:
    """Where packing stops paying: 4 trials of wider MLPs and CNNs, packed against one after another, with what
    `auto` decides for each (it must not pack where the ratio is above 1)."""
    from trainq.models.packing import step_flops

    shapes = [("MLP", w, None) for w in (64, 256, 512)] + [("CNN", None, c) for c in ((8, 16), (16, 32), (32, 64))]
    for kind, width, channels in shapes:
        raw = copy.deepcopy(MLP if kind == "MLP" else CNN)
        if kind == "MLP":
            raw["model"]["layers"][0]["units"] = raw["model"]["layers"][2]["units"] = width
            label = f"MLP {width}-{width}"
        else:
            raw["model"]["layers"][0]["out_channels"], raw["model"]["layers"][3]["out_channels"] = channels
            raw["dataset"]["n_samples"] = 1500
            label = f"CNN {channels[0]}-{channels[1]} channels"
        raw["training"]["epochs"] = 3
        specs = trials(raw, 4)
        fit(specs[0], device=device), fit_pack(specs[:2], device=device)
        seq, pk = best_of_each([lambda: [fit(spec, device=device) for spec in specs],
                                lambda: fit_pack(specs, device=device)], 1)
        auto = worth_packing(specs[0], device)
        ok = "" if auto or pk / seq > 0.9 else " (auto leaves a gain unused)"
        bad = " FAIL: auto packs where packing is slower" if auto and pk / seq > 1.0 else ""
        print(f"crossover {label}: {step_flops(specs[0]) / 1e6:.0f} M multiply-adds a step, packed / sequential "
              f"{pk / seq:.2f}, auto {'packs' if auto else 'does not pack'}{ok}{bad}")
        row(f"{label} ({step_flops(specs[0]) / 1e6:.0f} M/step), 4 trials: packed / sequential; auto "
            f"{'packs' if auto else 'runs them apart'}", f"{seq:.2f} s", f"{pk:.2f} s", f"{pk / seq:.2f}x",
            "auto packs only below 1x")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    cuda = args.device.startswith("cuda")
    measure("digits MLP", MLP, 8, 0.35 if not cuda else None, args.device, args.repeats)
    measure("digits MLP", MLP, 32, 0.2 if not cuda else 0.1, args.device, args.repeats)
    measure("small CNN", CNN, 8, None, args.device, args.repeats)
    if not cuda:
        crossover(args.device)


if __name__ == "__main__":
    main()
