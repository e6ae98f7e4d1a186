"""Data-parallel training on CPU with the gloo backend and two processes learns what one process learns."""

from __future__ import annotations

import threading

import pytest
import torch
import torch.distributed as dist

from tests.specs import mlp
from trainq.models.distributed import _join
from trainq.models.engine import fit
from trainq.models.spec import parse_spec
from trainq.models.state import Callback


def test_two_gloo_replicas_match_the_single_process_run():
    spec = parse_spec(mlp(hidden=(64,), epochs=4, batch_size=64))
    single = fit(spec, threads=1)
    seen = []

    class Watch(Callback):
        def on_epoch_end(self, state):
            seen.append((state.rank, state.world, state.epoch))

    double = fit(spec, world=2, callbacks=[Watch()], threads=1)
    assert seen == [(0, 2, e) for e in range(1, 5)]  # callbacks run on rank 0 only
    assert [h["train_loss"] for h in double.history] == pytest.approx([h["train_loss"] for h in single.history],
                                                                       rel=1e-4)
    assert [h["val_loss"] for h in double.history] == pytest.approx([h["val_loss"] for h in single.history],
                                                                     rel=1e-4)
    assert double.metrics["test_accuracy"] == pytest.approx(single.metrics["test_accuracy"], abs=0.003)


def test_a_cancel_on_rank_0_stops_every_replica_at_the_epochs_end():
    spec = parse_spec(mlp(hidden=(32,), epochs=50, batch_size=64))
    interrupt = threading.Event()

    class CancelAfterTwo(Callback):
        def on_epoch_end(self, state):
            if state.epoch == 2:
                interrupt.set()

    result = fit(spec, world=2, callbacks=[CancelAfterTwo()], interrupt=interrupt, threads=1)
    assert (result.stop_reason, result.epochs) == ("cancelled", 2)


def test_a_gpu_replica_binds_its_gpu_before_it_joins_the_group(monkeypatch):
    # No GPU here: CUDA's and NCCL's entry points are stood in for, to check what each replica hands them.
    calls = []
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: calls.append(("set_device", device)))
    monkeypatch.setattr(dist, "init_process_group",
                        lambda backend, **kw: calls.append((backend, kw["rank"], kw["world_size"], kw["device_id"])))
    gpu = torch.device("cuda", 1)
    _join("nccl", "tcp://127.0.0.1:1", 1, 2, gpu)
    _join("gloo", "tcp://127.0.0.1:1", 1, 2, torch.device("cpu"))
    assert calls == [("set_device", gpu), ("nccl", 1, 2, gpu), ("gloo", 1, 2, None)]
