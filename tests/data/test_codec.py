"""The table codec: planned from a profile, fitted on the training rows only, and the same in numpy and in ONNX."""

from __future__ import annotations

import io
import math

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pytest
from onnx import TensorProto, helper

from trainq.data import codec, formats
from trainq.data.formats import DataError
from trainq.data.profile import profile_table


def table_and_profile(rows: dict):
    table = pa.table(rows)
    return table, profile_table([b for b in table.to_batches()], "parquet", target="y")


ROWS = {
    "size": [1.0, None, 3.0, 4.0, float("nan"), 6.0, 7.0, 8.0, 100.0, None],
    "plan": ["a", "b", "a", None, "a", "b", "c", "a", "zzz", "b"],
    "city": ["x", "y", "x", "y", "x", "y", "x", "y", "w", None],
    "y": [0, 1, 0, 1, 0, 1, 0, 1, 0, 1],
}
TRAIN = np.arange(8)  # rows 8 and 9 are not training rows: their values teach nothing


def run_onnx(fitted: codec.Codec, feeds: dict) -> np.ndarray:
    inputs, nodes, inits = codec.onnx_graph(fitted, "x")
    out = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", fitted.width])
    model = helper.make_model(helper.make_graph(nodes, "prep", inputs, [out], inits), ir_version=10,
                              opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(codec.ML_DOMAIN, 3)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["x"], feeds)[0]


def test_fills_scales_and_vocabularies_come_from_the_training_rows_only():
    table, profile = table_and_profile(ROWS)
    planned = codec.plan(profile, {}, codec.Rule(missing="median", indicator=True), "zscore")
    fitted = codec.fit(planned, table, TRAIN)
    size, plan, city = fitted.features
    train_sizes = [1.0, 3.0, 4.0, 6.0, 7.0, 8.0]  # NaN and None are missing; 100.0 is in row 8
    assert size.fill == np.median(train_sizes)
    filled = [1.0, size.fill, 3.0, 4.0, size.fill, 6.0, 7.0, 8.0]
    assert (size.shift, size.div) == pytest.approx((np.mean(filled), np.std(filled)))
    assert plan.vocab == ["a", "b", "c"] and plan.fill == "a"  # most frequent first; a mean is a mode here
    assert plan.slots == 4  # four distinct values in the whole table: the dry run's width
    assert city.vocab == ["x", "y"]
    x = codec.encode(fitted, table)
    assert x.shape == (10, (1 + 1) + (4 + 1 + 1) + (3 + 1 + 1)) == (10, fitted.width)
    assert x[1, 0] == pytest.approx((size.fill - size.shift) / size.div) and x[1, 1] == 1.0  # filled, marked
    assert x[8, 2:7].tolist() == [1, 0, 0, 0, 0]  # zzz, never seen in training: the unknown bucket
    assert x[3, 2:8].tolist() == [0, 1, 0, 0, 0, 1]  # missing plan: its fill (a), and the indicator


def test_the_onnx_graph_computes_what_numpy_computes_from_raw_columns():
    table, profile = table_and_profile(ROWS)
    rules = {"city": codec.Rule(type="category", encoding="embedding", dim=2),
             "plan": codec.Rule(missing="constant", fill_value="none", indicator=True, max_categories=2)}
    fitted = codec.fit(codec.plan(profile, rules, codec.Rule(), "minmax"), table, TRAIN)
    assert fitted.features[1].vocab == ["a", "b"] and fitted.features[1].fill == "none"
    assert fitted.embeddings() == [(fitted.width - 1, 3 + 1, 2)]
    feeds = codec.feeds_of(fitted, table)
    assert feeds["plan"][3, 0] == "" and math.isnan(feeds["size"][1, 0])
    onnx_x = run_onnx(fitted, feeds)
    np.testing.assert_allclose(onnx_x, codec.encode(fitted, table), atol=1e-6)
    unseen = {"size": np.array([[np.inf], [2.5]], np.float32), "plan": np.array([["c"], ["b"]], object),
              "city": np.array([["moon"], ["y"]], object)}
    np.testing.assert_allclose(run_onnx(fitted, unseen), codec.encode_feeds(fitted, unseen), atol=1e-6)
    assert codec.encode_feeds(fitted, unseen)[0, -1] == 0  # an unseen city: index 0, embedded as the unknown


def test_plan_names_what_the_rules_get_wrong():
    _, profile = table_and_profile(ROWS)
    with pytest.raises(DataError, match="no column 'plam'"):
        codec.plan(profile, {"plam": codec.Rule(type="category")}, codec.Rule(), "zscore")
    with pytest.raises(DataError, match="column 'plan' holds text"):
        codec.plan(profile, {"plan": codec.Rule(type="number")}, codec.Rule(), "zscore")
    planned = codec.plan(profile, {"size": codec.Rule(type="ignore")}, codec.Rule(), "zscore")
    assert [f.name for f in planned.features] == ["plan", "city"]


def test_drop_row_marks_the_rows_without_a_value():
    table, profile = table_and_profile(ROWS)
    planned = codec.plan(profile, {"plan": codec.Rule(missing="drop_row")}, codec.Rule(), "none")
    assert codec.required_rows(planned, table).tolist() == [True] * 3 + [False] + [True] * 6
    assert planned.columns()[1] == {"name": "plan", "kind": "category", "required": True, "categories": []}


def test_a_csv_column_typed_by_its_first_block_is_read_again_as_text(monkeypatch):
    monkeypatch.setattr(formats, "BLOCK_BYTES", 4096)
    data = "a,b,c\n" + "".join(f"{i},{i % 5},{i % 7}\n" for i in range(3000)) + "word,1,2\n"
    seen = list(formats.batches(io.BytesIO(data.encode()), "csv"))
    restart = seen.index(formats.RESTART)
    assert restart > 0 and pa.types.is_integer(seen[0].schema.field("a").type)  # the first blocks: numbers
    again = seen[restart + 1:]
    assert len(again) > 1 and all(pa.types.is_string(b.schema.field("a").type) for b in again)
    assert sum(b.num_rows for b in again) == 3001
    table = formats.read_table(io.BytesIO(data.encode()), "csv")
    assert table.num_rows == 3001 and table.column("a")[-1].as_py() == "word"
    profile = profile_table(formats.batches(io.BytesIO(data.encode()), "csv"), "csv", target="b")
    assert profile["rows"] == 3001 and profile["columns"][0]["type"] == "identifier"


def test_a_median_is_exact_up_to_the_reservoir_and_a_fair_sample_past_it(monkeypatch):
    monkeypatch.setattr(codec, "RESERVOIR", 1000)
    values = np.arange(5000, dtype=float)
    table = pa.table({"x": values, "y": np.arange(5000) % 2})
    profile = profile_table(table.to_batches(max_chunksize=700), "parquet", target="y")
    planned = codec.plan(profile, {}, codec.Rule(missing="median"), "none")
    fitter = codec.Fitter(planned)
    for batch in table.to_batches(max_chunksize=700):
        fitter.add(pa.Table.from_batches([batch]))
    assert fitter.stats[0]["seen"] == 5000 and len(fitter.stats[0]["kept"]) == 1000
    assert abs(fitter.fitted().features[0].fill - np.median(values)) < 250  # a sample's median, not the first 1000's
    small = codec.Fitter(planned)
    small.add(table.slice(0, 999))
    assert small.fitted().features[0].fill == np.median(values[:999])


def test_a_parquet_row_group_larger_than_the_budget_is_refused():
    import pyarrow.parquet as pq

    out = io.BytesIO()
    pq.write_table(pa.table({"a": np.arange(100_000.0), "y": np.arange(100_000) % 2}), out)
    with pytest.raises(DataError, match="row group 0 holds"):
        list(formats.batches(io.BytesIO(out.getvalue()), "parquet", budget_bytes=100_000))


def test_prefetched_items_come_in_order_and_an_error_on_its_thread_is_raised_here():
    assert list(formats.prefetched(iter(range(50)), depth=2)) == list(range(50))

    def broken():
        yield 1
        raise DataError("line 3: 4 fields")

    with pytest.raises(DataError, match="line 3"):
        list(formats.prefetched(broken()))
    made = []

    def endless():
        while True:
            made.append(len(made))
            yield made[-1]

    for item in formats.prefetched(endless(), depth=2):
        if item == 5:
            break  # the consumer stops early: the thread stops too, a few items ahead at most
    import time

    time.sleep(0.3)
    assert len(made) <= 5 + 4


@pytest.mark.parametrize("parallel", [False, True])
def test_a_large_csv_is_read_the_same_in_chunks_on_threads_as_front_to_back(tmp_path, monkeypatch, parallel):
    monkeypatch.setattr(formats, "PARALLEL_FROM", 10_000 if parallel else 10**12)
    monkeypatch.setattr(formats, "PARALLEL_CHUNK", 8_000)
    monkeypatch.setattr(formats, "BLOCK_BYTES", 8_000)
    lines = ["a,b,c"] + [f"{i},{i % 5}.5,{'xyz'[i % 3]}" for i in range(4000)] + ["word,1.5,x"]
    path = tmp_path / "t.csv"
    path.write_text("\n".join(lines) + "\n")
    table = formats.read_table(path, "csv")
    assert table.num_rows == 4001 and pa.types.is_string(table.schema.field("a").type)
    assert table.column("a")[-1].as_py() == "word" and table.column("a")[0].as_py() == "0"
    ragged = path.with_name("r.csv")
    ragged.write_text("\n".join(lines[:3000] + ["1,2,3,4"] + lines[3000:]) + "\n")
    with pytest.raises(DataError, match="line 3001: 4 fields, the header has 3"):
        formats.read_table(ragged, "csv")
    quoted = path.with_name("q.csv")
    quoted.write_text("\n".join(lines[:3000] + ['7,"a\nb",x'] + lines[3000:]) + "\n")
    table = formats.read_table(quoted, "csv")  # a newline inside quotes: read front to back
    assert table.num_rows == 4002 and "a\nb" in table.column("b").to_pylist()
