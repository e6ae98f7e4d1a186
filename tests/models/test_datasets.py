"""Datasets: splits by seed, preprocessing statistics from the training split only."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trainq.models.datasets import load, raw, split_indices
from trainq.models.spec import DatasetSpec, Uploaded


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


@pytest.mark.parametrize("spec", [DatasetSpec(name="shapes", n_samples=400, image_size=12, channels=3, seed=4),
                                  DatasetSpec(name="digits", as_images=True, seed=4)])
def test_8_bit_images_are_stored_as_uint8_and_scaled_per_batch_as_the_float_path_would(spec):
    x, _ = raw(spec)
    data = load(spec)
    train = data.train
    assert train.x.dtype == torch.uint8 and train.x.nbytes == train.x.numel()  # one byte a pixel, not four
    # the float path: per-channel z-score with the training split's statistics, applied to every split
    train_rows, _, _ = split_indices(len(x), spec.val_fraction, spec.test_fraction, spec.seed)
    pixels = x[train_rows].astype(np.float64)
    mean, std = pixels.mean(axis=(0, 2, 3), keepdims=True), pixels.std(axis=(0, 2, 3), keepdims=True)
    expected = torch.from_numpy(((pixels - mean) / std).astype(np.float32))
    assert torch.allclose(train.features(), expected, atol=1e-5)
    assert train.take(torch.tensor([5, 0, 2])).dtype == torch.float32
    assert torch.equal(train.take(torch.tensor([5, 0, 2])), train.features()[[5, 0, 2]])
    channel_mean = train.features().mean(dim=(0, 2, 3))
    assert torch.allclose(channel_mean, torch.zeros_like(channel_mean), atol=1e-4)
    assert not torch.allclose(data.test.features().mean(dim=(0, 2, 3)), channel_mean, atol=1e-4)


def test_images_that_are_not_whole_bytes_and_tables_stay_float32():
    images = np.random.default_rng(0).uniform(0, 1, (40, 1, 8, 8)).astype(np.float32)
    labels = np.arange(40) % 2
    spec = DatasetSpec(name="upload", upload="u")
    spec.resolve(Uploaded("u", 1, "arrays", 40, 2, shape=(1, 8, 8)))
    data = load(spec, (images, labels))
    assert data.train.x.dtype == torch.float32 and data.train.shift is None
    assert torch.equal(data.train.features(), data.train.x)
    whole = np.rint(images * 255)  # an 8-bit upload sent as floats: stored as uint8, losslessly
    data = load(spec, (whole, labels))
    assert data.train.x.dtype == torch.uint8
    assert load(DatasetSpec(name="wine")).train.x.dtype == torch.float32
