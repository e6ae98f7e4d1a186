"""Data-parallel training on CPU with the gloo backend and two processes learns what one process learns."""

from __future__ import annotations

import threading

import pytest

from tests.specs import mlp
from trainq.models.callbacks import Callback
from trainq.models.engine import fit
from trainq.models.spec import parse_spec


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
