"""Tables larger than memory: shards written once with the codec fitted on the training rows, batches in an order
drawn from (seed, epoch), a resume that jumps to its batch by arithmetic and ends exactly as an uninterrupted run."""

from __future__ import annotations

import numpy as np
import pytest

from tests.integration.test_datasets_on_workers import churn_csv
from trainq.data import formats, profile
from trainq.data.shards import Manifest, hash_split
from trainq.models.checkpoint import read_meta
from trainq.models.engine import fit
from trainq.models.spec import Uploaded, parse_spec
from trainq.models.streams import ShardedSplit
from trainq.settings import Settings
from trainq.workers.data import source, streams

SPEC = {"name": "streamed", "dataset": {"name": "upload", "upload": "churn",
                                        "missing": {"strategy": "median", "indicator": True}},
        "model": {"layers": [{"type": "dense", "units": 32}, {"type": "activation", "fn": "relu"},
                             {"type": "dropout", "p": 0.1}, {"type": "dense", "units": 2}]},
        "loss": {"type": "cross_entropy"}, "optimizer": {"type": "adam", "lr": 0.01},
        "training": {"epochs": 3, "batch_size": 64, "data_placement": "stream", "checkpoint_every_seconds": 0}}


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    folder = tmp_path_factory.mktemp("stream")
    path = folder / "churn.csv"
    path.write_bytes(churn_csv(6000))
    found = profile.profile_table(formats.batches(path, "csv"), "csv", target="churned")
    return path, Uploaded("churn", 1, "table", found["rows"], 2, ("no", "yes"), None, found, "churn-sha", "id")


def streamed(table, raw=SPEC, memory_mb=1, data_dir=None):
    path, uploaded = table
    spec = parse_spec(raw, uploads=lambda ref: uploaded)
    settings = Settings(data_dir=data_dir or path.parent / ".trainq", data_memory_mb=memory_mb)
    return spec, source(spec.dataset, path, settings, placement=spec.training.data_placement)


def test_shards_hold_every_kept_row_once_split_by_a_hash_of_its_index(table):
    spec, src = streamed(table)
    m = src.manifest
    assert len(m.shards["train"]) > 1  # a budget of 1 MiB: shards of a sixteenth of it
    total = sum(m.rows(name) for name in ("train", "val", "test"))
    assert total == 6000  # every row has a target
    assert m.rows("val") == pytest.approx(0.15 * 6000, abs=90) and m.rows("test") == pytest.approx(900, abs=90)
    codes = hash_split(np.arange(6000), spec.dataset.seed, 0.15, 0.15)
    assert [int((codes == k).sum()) for k in range(3)] == [m.rows("train"), m.rows("val"), m.rows("test")]
    assert Manifest.load(m.folder).shards == m.shards  # made once: the next run finds them
    spec_again, again = streamed(table)
    assert again.manifest.folder == m.folder


def test_an_epochs_batches_visit_every_row_once_and_a_resume_jumps_to_its_batch(table, monkeypatch):
    _, src = streamed(table)
    train = ShardedSplit(src.manifest, "train")
    whole = list(train.batches(seed=0, epoch=2, size=50))
    rows = np.concatenate([x.numpy() for _, x, _ in whole])
    assert len(rows) == len(train) and [b for b, _, _ in whole] == list(range(len(whole)))
    everything = np.concatenate([src.manifest.read("train", i)[0] for i in range(len(src.manifest.shards["train"]))])
    assert sorted(map(tuple, rows.tolist())) == sorted(map(tuple, everything.tolist()))  # each row once
    other = np.concatenate([x.numpy() for _, x, _ in train.batches(seed=0, epoch=3, size=50)])
    assert not np.array_equal(rows, other)  # another epoch, another order
    reads = []
    original = src.manifest.read
    monkeypatch.setattr(src.manifest, "read", lambda split, i: reads.append(i) or original(split, i))
    k = int(len(whole) * 0.9)
    tail = list(train.batches(seed=0, epoch=2, size=50, start_batch=k))
    assert [b for b, _, _ in tail] == list(range(k, len(whole)))
    assert all(np.array_equal(a[1].numpy(), b[1].numpy()) for a, b in zip(whole[k:], tail))
    assert len(reads) <= 2  # 90 % in: the shard holding its row and the next, no replay of the others


def test_a_streamed_run_resumed_part_way_through_an_epoch_ends_exactly_as_an_uninterrupted_one(table):
    raw = {**SPEC, "training": {**SPEC["training"], "checkpoint_every_seconds": 0.001}}  # one every batch or so
    spec, src = streamed(table, raw)
    blobs: list[bytes] = []
    whole = fit(spec, device="cpu", arrays=src, checkpoint_sink=lambda blob, info: blobs.append(blob))
    mid = [b for b in blobs if read_meta(b)["batch_in_epoch"]]
    assert len(mid) > 10, "a streamed epoch checkpoints on the clock part-way through"
    meta = read_meta(mid[len(mid) // 2])
    assert meta["epoch"] < 3 and meta["batch_in_epoch"] > 0
    resumed = fit(spec, device="cpu", arrays=src, resume=mid[len(mid) // 2])
    assert resumed.history[-1] == whole.history[-1]  # train_loss, val_loss and every metric, bit for bit
    assert resumed.metrics == whole.metrics


def test_auto_streams_a_table_larger_than_the_budget(table):
    from dataclasses import replace

    _, uploaded = table
    auto = {**SPEC, "training": {**SPEC["training"], "data_placement": "auto"}}
    small = parse_spec(auto, uploads=lambda ref: uploaded).dataset  # 6,000 rows of 12 columns: 0.3 MiB
    big = parse_spec(auto, uploads=lambda ref: replace(uploaded, rows=60_000)).dataset
    big.resolve(replace(uploaded, rows=60_000, profile={**uploaded.profile, "columns": [
        {**c, "count": 60_000} for c in uploaded.profile["columns"]]}))
    budget = Settings(data_memory_mb=1)
    assert not streams(small, "auto", budget) and streams(big, "auto", budget)
    assert streams(small, "stream", budget) and not streams(big, "device", budget)


@pytest.mark.parametrize("change, path", [({"resources": {"gpus": 2}}, "resources.gpus"),
                                          ({"inference": {"method": "mc_dropout"}}, "inference"),
                                          ({"dataset": {"name": "digits"}}, "training.data_placement")])
def test_what_a_stream_cannot_do_is_refused_by_path(table, change, path):
    from trainq.models.spec import SpecError

    _, uploaded = table
    with pytest.raises(SpecError) as caught:
        parse_spec({**SPEC, **change}, uploads=lambda ref: uploaded)
    assert path in [e.path for e in caught.value.errors]
