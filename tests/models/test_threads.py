"""The engine's CPU thread choice: one thread for steps too small to split, the whole share otherwise."""

from __future__ import annotations

import torch

from tests.specs import mlp
from trainq.models.engine import PARALLEL_STEP_FLOPS, cpu_threads, fit
from trainq.models.spec import parse_spec, plan


def test_small_steps_run_on_one_thread_and_large_ones_on_the_share():
    small = parse_spec(mlp(hidden=(64,), batch_size=64))
    big = parse_spec(mlp(hidden=(4096, 4096), batch_size=512))
    assert 3 * plan(small).flops_per_example * 64 < PARALLEL_STEP_FLOPS
    assert cpu_threads(small, 8) == 1
    assert cpu_threads(big, 8) == 8


def test_conv_flops_count_every_output_pixel():
    spec = parse_spec({"name": "c", "dataset": {"name": "shapes", "image_size": 16},
                       "model": {"layers": [{"type": "conv2d", "out_channels": 4, "kernel": 3, "padding": "same"},
                                            {"type": "flatten"}, {"type": "dense", "units": 3}]},
                       "loss": {"type": "cross_entropy"}, "optimizer": {"type": "adam"}})
    assert plan(spec).flops_per_example == (4 * 9 + 4) * 16 * 16 + (4 * 16 * 16 * 3 + 3)


def test_fit_restores_the_thread_setting():
    before = torch.get_num_threads()
    seen = []

    from trainq.models.state import Callback

    class Watch(Callback):
        def on_epoch_end(self, state):
            seen.append(torch.get_num_threads())

    fit(parse_spec(mlp(epochs=1)), callbacks=[Watch()])
    assert seen == [1] and torch.get_num_threads() == before
