"""Small specs the tests build on."""

from __future__ import annotations

import copy


def mlp(dataset: str = "digits", hidden: tuple[int, ...] = (64,), outputs: int = 10, **training) -> dict:
    layers = []
    for units in hidden:
        layers += [{"type": "dense", "units": units}, {"type": "activation", "fn": "relu"}]
    layers.append({"type": "dense", "units": outputs})
    return {
        "name": f"{dataset}-mlp",
        "dataset": {"name": dataset, "seed": 0},
        "model": {"init": "he", "layers": layers},
        "loss": {"type": "cross_entropy"},
        "optimizer": {"type": "adam", "lr": 0.001},
        "training": {"epochs": 5, "batch_size": 64, "seed": 0, **training},
    }


def xor() -> dict:
    return {
        "name": "xor",
        "dataset": {"name": "xor"},
        "model": {"init": "xavier", "layers": [{"type": "dense", "units": 4}, {"type": "activation", "fn": "tanh"},
                                               {"type": "dense", "units": 1}]},
        "loss": {"type": "bce"},
        "optimizer": {"type": "adam", "lr": 0.05},
        "training": {"epochs": 300, "batch_size": 4, "seed": 0},
    }


def with_(spec: dict, **changes) -> dict:
    """Copy a spec and set dotted paths: with_(s, **{"optimizer.lr": 0.1})."""
    out = copy.deepcopy(spec)
    for path, value in changes.items():
        node = out
        *parents, leaf = path.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return out
