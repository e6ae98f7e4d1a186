"""Datasets: splits by seed, preprocessing statistics from the training split only."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trainq.models.datasets import load, raw
from trainq.models.spec import DatasetSpec


def test_zscore_uses_training_statistics_only():
    spec = DatasetSpec(name="wine", seed=3)
    data = load(spec)
    assert torch.allclose(data.train.x.mean(0), torch.zeros(13), atol=1e-5)
    assert torch.allclose(data.train.x.std(0, unbiased=False), torch.ones(13), atol=1e-4)
    # the held-out splits are scaled with the training statistics, so they are not exactly standardized
    assert not torch.allclose(data.test.x.mean(0), torch.zeros(13), atol=1e-3)


def test_minmax_maps_the_training_split_to_unit_range():
    data = load(DatasetSpec(name="iris", preprocess={"scale": "minmax"}))
    assert torch.allclose(data.train.x.min(0).values, torch.zeros(4))
    assert torch.allclose(data.train.x.max(0).values, torch.ones(4))


def test_split_sizes_and_seed():
    a, b = load(DatasetSpec(name="digits", seed=1)), load(DatasetSpec(name="digits", seed=1))
    c = load(DatasetSpec(name="digits", seed=2))
    assert (len(a.train), len(a.val), len(a.test)) == (1257, 270, 270)
    assert torch.equal(a.test.x, b.test.x) and not torch.equal(a.test.x, c.test.x)


@pytest.mark.parametrize("gate, labels", [("or", [0, 1, 1, 1]), ("and", [0, 0, 0, 1]), ("xor", [0, 1, 1, 0])])
def test_logic_gates_are_their_truth_tables(gate, labels):
    x, y = raw(DatasetSpec(name=gate))
    assert x.tolist() == [[0, 0], [1, 0], [0, 1], [1, 1]]
    assert y.tolist() == labels
    data = load(DatasetSpec(name=gate))
    assert len(data.train) == len(data.val) == len(data.test) == 4


@pytest.mark.parametrize("name, classes", [("moons", 2), ("circles", 2), ("spirals", 3), ("blobs", 3)])
def test_generators_make_the_asked_size(name, classes):
    x, y = raw(DatasetSpec(name=name, n_samples=300))
    assert x.shape[0] == 300 and x.dtype == np.float32
    assert sorted(set(y.tolist())) == list(range(classes))


def test_regression_targets_are_standardized_with_training_statistics():
    data = load(DatasetSpec(name="diabetes"))
    assert data.classes is None and data.train.y.shape[1] == 1
    assert abs(float(data.train.y.mean())) < 1e-5
    assert 140 < data.y_mean < 165
