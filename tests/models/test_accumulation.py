"""Gradient accumulation and the out-of-memory retry: the same effective batch, the same learning."""

from __future__ import annotations

import pytest
import torch

from tests.specs import mlp, with_
from trainq.models.engine import fit
from trainq.models.spec import parse_spec
from trainq.workers.runner import fit_retrying_oom, out_of_memory


def test_accumulating_micro_batches_learns_what_the_whole_batch_learns():
    spec = mlp(epochs=3, batch_size=64)
    whole = fit(parse_spec(spec))
    parts = fit(parse_spec(with_(spec, **{"training.accumulate_steps": 4})))
    assert [h["train_loss"] for h in parts.history] == pytest.approx([h["train_loss"] for h in whole.history],
                                                                      rel=1e-4)
    assert parts.metrics["test_accuracy"] == pytest.approx(whole.metrics["test_accuracy"], abs=1e-6)


def test_the_dry_run_counts_the_smaller_micro_batch():
    from trainq.models.spec import plan

    big = plan(parse_spec(mlp(hidden=(512,), batch_size=512)))
    small = plan(parse_spec(mlp(hidden=(512,), batch_size=512, accumulate_steps=8)))
    assert small.memory_bytes < big.memory_bytes


def test_out_of_memory_is_retried_once_at_half_the_micro_batch_from_the_last_checkpoint():
    calls, said = [], []

    def fake_fit(spec, *, resume, checkpoint_sink, **kwargs):
        calls.append((spec.training.accumulate_steps, resume))
        if spec.training.accumulate_steps == 1:
            checkpoint_sink(b"epoch-2", {"is_best": False})  # progress made before running out of memory
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return "trained"

    sunk = []
    result = fit_retrying_oom(parse_spec(mlp(batch_size=64)), lambda m, level="info": said.append((level, m)),
                              fit=fake_fit, resume=None, checkpoint_sink=lambda b, i: sunk.append(b))
    assert result == "trained"
    assert calls == [(1, None), (2, b"epoch-2")]
    assert sunk == [b"epoch-2"]
    (level, message), = said
    assert level == "warning" and "micro-batches of 32" in message and "2 gradient accumulation steps" in message


def test_a_second_out_of_memory_fails_with_the_reason_and_other_errors_are_not_retried():
    def always(spec, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory")

    with pytest.raises(MemoryError, match="out of memory again with micro-batches of 16"):
        fit_retrying_oom(parse_spec(mlp(batch_size=64, accumulate_steps=2)), lambda *a: None, fit=always)

    calls = []

    def broken(spec, **kwargs):
        calls.append(1)
        raise ValueError("not memory")

    with pytest.raises(ValueError):
        fit_retrying_oom(parse_spec(mlp()), lambda *a: None, fit=broken)
    assert calls == [1]
    assert out_of_memory(torch.OutOfMemoryError("x")) and not out_of_memory(RuntimeError("shape mismatch"))
