"""A 32-trial ASHA sweep end to end, packed against unpacked through the service, and against the same sweep written
the way a user would: Optuna's ask/tell driving a plain PyTorch loop in one process.

All three search the same space with the same sampler seed (trial n gets the same learning rate in each), prune with
successive halving (reduction factor 3, first rung 30 / 9 = 3 epochs) and train the digits MLP 64-64-10 of
engine_speed.py (batch 64, Adam, 30 epochs). The service runs on PostgreSQL and Redis with two CPU workers, each
given its share of the cores (one of two here: TRAINQ_CPU_THREADS; an unpacked trial of this MLP runs on one thread
either way, the engine's choice for a step this small). Timed from the submit to the sweep's end as the service
records it (the Optuna loop: from its first line to its last trial); each kind of sweep runs --repeats times,
alternating, and its fastest counts (the machine is shared and noisy).

    python bench/packed_sweep.py [--trials 32] [--repeats 3]
"""

from __future__ import annotations

import argparse
import copy
import os
import threading
import time
from datetime import datetime

import common  # noqa: F401 - puts the repository on sys.path
from stack import running_stack

from bench.common import best_of_each, row
from bench.engine_speed import MLP

EPOCHS = 30
WORKERS = 2
CORES_PER_WORKER = max(1, (os.cpu_count() or 1) // WORKERS)


def sweep_body(name: str, trials: int, pack) -> dict:
    base = copy.deepcopy(MLP)
    base["training"]["epochs"] = EPOCHS
    return {"name": name, "base": base, "search": {"optimizer.lr": {"log_uniform": [1e-4, 3e-2]}},
            "method": "random", "trials": trials, "parallel": trials, "metric": "val_loss",
            "pruner": {"type": "asha"}, "seed": 11, "pack": pack}


def through_service(stack, trials: int, pack) -> tuple[float, dict]:
    """Seconds from the submit to the sweep's end as the service recorded it (its finished_at: the time this polls
    at does not count), and the sweep as the API shows it, with each trial's spec."""
    started = time.time()
    answer = stack.http.post(f"{stack.url}/api/v1/sweeps", json=sweep_body(f"bench-{pack}", trials, pack), timeout=30)
    answer.raise_for_status()
    sweep_id = answer.json()["id"]
    while (state := stack.get(f"/api/v1/sweeps/{sweep_id}"))["status"] == "running":
        time.sleep(0.1)
    for trial in state["trials"]:
        trial["spec"] = stack.get(f"/api/v1/jobs/{trial['job_id']}")["spec"]
    return datetime.fromisoformat(state["finished_at"]).timestamp() - started, state


def training_alone(state: dict) -> tuple[float, float]:
    """The sweep's training without the service, each trial for the epochs it ran in `state`: one after another
    with the engine (halved: two workers at best), and as one pack whose members stop at those epochs. Their ratio
    is what packing alone can give this sweep here, with no per-trial cost on either side."""
    import torch

    from trainq.models.engine import fit
    from trainq.models.packed import fit_pack
    from trainq.models.spec import parse_spec

    torch.set_num_threads(CORES_PER_WORKER)  # a worker's share, as the service's workers have it

    ran = [(parse_spec({**t["spec"], "training": {**t["spec"]["training"], "epochs": t["epochs"]}}), t["epochs"])
           for t in state["trials"]]
    full = [parse_spec(t["spec"]) for t in state["trials"]]
    stops = [threading.Event() for _ in full]

    def stop_at_their_epochs(pack) -> None:
        for i, (_, epochs) in enumerate(ran):
            if pack.epoch >= epochs:
                stops[i].set()

    def packed():
        for s in stops:
            s.clear()
        fit_pack(full, interrupts=stops, on_validated=stop_at_their_epochs)
    packed()  # warm-up
    alone, together = best_of_each([lambda: [fit(spec) for spec, _ in ran], packed], 2)
    return alone / 2, together


def optuna_loop(trials: int) -> tuple[float, dict]:
    """What a user writes without trainq: Optuna asks, a plain loop trains and reports each epoch, Optuna prunes."""
    started = time.perf_counter()
    import optuna
    import torch
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler
    from torch import nn

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    torch.set_num_threads(1)  # a small MLP runs fastest on one thread (see the engine's cpu_threads)
    x, y = load_digits(return_X_y=True)
    x_train, x_rest, y_train, y_rest = train_test_split(x, y, test_size=0.3, random_state=0)
    x_val, _, y_val, _ = train_test_split(x_rest, y_rest, test_size=0.5, random_state=0)
    scaler = StandardScaler().fit(x_train)
    xt, xv = (torch.tensor(scaler.transform(a), dtype=torch.float32) for a in (x_train, x_val))
    yt, yv = torch.tensor(y_train), torch.tensor(y_val)
    study = optuna.create_study(direction="minimize", sampler=optuna.samplers.RandomSampler(seed=11),
                                pruner=optuna.pruners.SuccessiveHalvingPruner(min_resource=3, reduction_factor=3))

    def objective(trial: optuna.Trial) -> float:
        lr = trial.suggest_float("lr", 1e-4, 3e-2, log=True)
        torch.manual_seed(trial.number)
        model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        loss_fn = nn.CrossEntropyLoss()
        best = float("inf")
        for epoch in range(1, EPOCHS + 1):
            model.train()
            for idx in torch.randperm(len(xt)).split(64):
                optimizer.zero_grad()
                loss_fn(model(xt[idx]), yt[idx]).backward()
                optimizer.step()
            model.eval()
            with torch.no_grad():
                val = loss_fn(model(xv), yv).item()
            best = min(best, val)
            trial.report(val, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return best

    study.optimize(objective, n_trials=trials)
    pruned = sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials)
    return time.perf_counter() - started, {"best": study.best_value, "pruned": pruned}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="sweeps of each kind, alternating; the fastest counts")
    args = parser.parse_args()
    runs: dict[str, list[tuple[float, dict]]] = {"auto": [], "off": []}
    # Two workers on two cores: each worker's share is one core (TRAINQ_CPU_THREADS; `trainq worker` alone would
    # take every core for each, and the two would fight the service and PostgreSQL for them).
    with running_stack(workers=WORKERS, TRAINQ_CPU_THREADS=str(CORES_PER_WORKER)) as stack:
        through_service(stack, 2, "off")  # warm up both workers' processes and the service's Optuna storage
        for _ in range(args.repeats):
            for pack in runs:
                runs[pack].append(through_service(stack, args.trials, pack))
    (packed_s, packed), (unpacked_s, unpacked) = (min(runs[p], key=lambda r: r[0]) for p in ("auto", "off"))
    print("each sweep, seconds: packed " + ", ".join(f"{t:.2f}" for t, _ in runs["auto"]) + "; unpacked "
          + ", ".join(f"{t:.2f}" for t, _ in runs["off"]))
    optuna_s, peer = optuna_loop(args.trials)
    unpacked_train, packed_train = training_alone(unpacked)

    def pruned(state: dict) -> int:
        return state["counts"].get("pruned", 0)

    same = packed["best"]["trial"] == unpacked["best"]["trial"]
    ratio = unpacked_s / packed_s
    print(f"{args.trials}-trial ASHA sweep: unpacked {unpacked_s:.1f}s ({pruned(unpacked)} pruned, best trial "
          f"{unpacked['best']['trial']} {unpacked['best']['value']:.4f}), packed {packed_s:.1f}s ({pruned(packed)} "
          f"pruned, best trial {packed['best']['trial']} {packed['best']['value']:.4f}): {ratio:.2f}x faster "
          f"(target >= 3x) {'PASS' if ratio >= 3 else 'FAIL'}; same best trial: {'yes' if same else 'NO'}")
    print(f"Optuna ask/tell with a plain PyTorch loop, one process: {optuna_s:.1f}s ({peer['pruned']} pruned, best "
          f"{peer['best']:.4f}); trainq packed is {optuna_s / packed_s:.2f}x faster end to end "
          f"{'PASS' if optuna_s > packed_s else 'FAIL'}")
    row(f"{args.trials}-trial ASHA sweep, submit to done: packed / unpacked (2 CPU workers, best of {args.repeats})",
        f"{unpacked_s:.1f} s", f"{packed_s:.1f} s", f"{ratio:.2f}x faster", ">= 3x")
    print(f"the sweep's training alone, no service: the trials one after another {2 * unpacked_train:.2f}s (halved "
          f"for two workers: {unpacked_train:.2f}s), as one pack stopping each at its epochs {packed_train:.2f}s: "
          f"packing alone gives {unpacked_train / packed_train:.2f}x; the rest of the ratio above is per-trial cost "
          "that packing saves")
    row("the sweep's training alone (no service): trials one after another over 2 workers / one pack",
        f"{unpacked_train:.2f} s", f"{packed_train:.2f} s", f"{unpacked_train / packed_train:.2f}x faster", "-")
    row("the same sweep: trainq packed / Optuna ask-tell + plain PyTorch loop", f"{optuna_s:.1f} s",
        f"{packed_s:.1f} s", f"{optuna_s / packed_s:.2f}x faster", "faster")


if __name__ == "__main__":
    main()
