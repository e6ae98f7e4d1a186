"""Inputs checked against a version's signature: every mistake listed at once, by its path; good input as x."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from trainq.service.inference import InputError, Sessions, friendly, record_inputs, v2_inputs
from trainq.service.registry import RegistryError, parse_ref

SIGNATURE = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 3]}], "features": ["a", "b", "c"],
             "outputs": [{"name": "label", "datatype": "INT64", "shape": [-1]},
                         {"name": "probabilities", "datatype": "FP32", "shape": [-1, 2]}],
             "class_names": ["no", "yes"], "task": "classification"}


def errors_of(call, *args) -> list[tuple[str, str]]:
    with pytest.raises(InputError) as caught:
        call(*args)
    return [(e["path"], e["message"]) for e in caught.value.errors]


def test_v2_tensors_flat_or_nested_become_float32_rows():
    flat = {"inputs": [{"name": "x", "shape": [2, 3], "datatype": "FP64", "data": [1, 2, 3, 4, 5, 6.5]}]}
    feeds, wanted, extra = v2_inputs(flat, SIGNATURE, 100)
    x = feeds["x"]
    assert x.dtype == np.float32 and x.tolist() == [[1, 2, 3], [4, 5, 6.5]] and wanted is None
    nested = {"inputs": [{"name": "x", "shape": [2, 3], "datatype": "INT32", "data": [[1, 2, 3], [4, 5, 6]]}],
              "outputs": [{"name": "label"}], "id": "7", "parameters": {"samples": 4}}
    feeds, wanted, extra = v2_inputs(nested, SIGNATURE, 100)
    assert feeds["x"].shape == (2, 3) and wanted == ["label"] and extra == {"id": "7", "parameters": {"samples": 4}}


def test_every_v2_mistake_is_listed_with_its_path():
    body = {"inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP32", "data": [0] * 8},
                       {"name": "pixels", "shape": [1, 3], "datatype": "FP32", "data": [0, 0, 0]},
                       {"name": "x", "shape": [1, 3], "datatype": "STRING", "data": [1, "two", True]},
                       {"name": "x", "shape": [2, 3], "datatype": "FP32", "data": [1, 2, 3]},
                       {"name": "x", "shape": [2, 3], "datatype": "FP32", "data": [[1, 2, 3], [4, 5]]}],
            "outputs": [{"name": "logits"}], "id": 5}
    found = errors_of(v2_inputs, body, SIGNATURE, 100)
    assert [p for p, _ in found] == ["inputs[0].shape", "inputs[1].name", "inputs[2].datatype", "inputs[2].data[1]",
                                     "inputs[2].data[2]", "inputs[3].data", "inputs[4].data", "outputs[0].name", "id"]
    messages = dict(found)
    assert "each row has shape [3]" in messages["inputs[0].shape"]
    assert "a string where a number goes" == messages["inputs[2].data[1]"]
    assert "holds 3 values; shape [2, 3] needs 6" == messages["inputs[3].data"]
    assert "label, probabilities" in messages["outputs[0].name"]
    nan = {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [math.nan, math.inf, 1]}]}
    assert errors_of(v2_inputs, nan, SIGNATURE, 100) == [("inputs[0].data[0]", "NaN and Infinity are not accepted"),
                                                         ("inputs[0].data[1]", "NaN and Infinity are not accepted")]
    rows = {"inputs": [{"name": "x", "shape": [101, 3], "datatype": "FP32", "data": []}]}
    assert "over the limit of 100" in errors_of(v2_inputs, rows, SIGNATURE, 100)[0][1]
    ints = {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "INT64", "data": [1, 2.5, 3]}]}
    assert errors_of(v2_inputs, ints, SIGNATURE, 100) == [
        ("inputs[0].data[1]", "2.5 is not a whole number, and the datatype is an integer type")]


def test_records_by_name_in_the_models_order_and_every_mistake_at_once():
    x = record_inputs({"records": [{"c": 3, "a": 1, "b": 2}, {"a": 4.5, "b": 5, "c": 6}]}, SIGNATURE, 10)["x"]
    assert x.tolist() == [[1, 2, 3], [4.5, 5, 6]]
    body = {"records": [{"a": 1, "b": "2", "c": 3}, {"a": 1, "c": None}, {"a": 1, "b": 2, "c": 3, "d": 4}, 7]}
    assert errors_of(record_inputs, body, SIGNATURE, 10) == [
        ("records[0].b", "a string where a number goes"), ("records[1].b", "is missing"),
        ("records[1].c", "null where a number goes"),
        ("records[2].d", "is not a feature of this model; its features are a, b, c"),
        ("records[3]", "must be an object of feature name -> number")]
    assert record_inputs({"inputs": [[1, 2, 3]]}, SIGNATURE, 10)["x"].tolist() == [[1, 2, 3]]
    assert "rows must each have shape [3]" in errors_of(record_inputs, {"inputs": [[1, 2]]}, SIGNATURE, 10)[0][1]
    assert errors_of(record_inputs, {"records": [{}] * 11}, SIGNATURE, 10)[0][0] == "records"
    assert errors_of(record_inputs, {"records": [], "inputs": []}, SIGNATURE, 10)[0][0] == "(body)"


def test_friendly_answers_name_the_classes():
    results = {"label": np.array([1, 0]), "probabilities": np.array([[0.2, 0.8], [0.9, 0.1]], dtype=np.float32)}
    rows = friendly(results, SIGNATURE)
    assert rows[0]["label"] == "yes" and rows[0]["class_index"] == 1
    assert rows[1]["probabilities"] == {"no": pytest.approx(0.9), "yes": pytest.approx(0.1)}


@pytest.mark.parametrize("text, ref", [("digits", ("digits", None, None)), ("digits@champion", ("digits", "champion",
                                                                                                    None)),
                                       ("my.model-2/versions/12", ("my.model-2", None, 12))])
def test_references(text, ref):
    parsed = parse_ref(text)
    assert (parsed.name, parsed.alias, parsed.version) == ref and str(parsed) == text


@pytest.mark.parametrize("text", ["", "bad name", "digits@Champion", "digits/versions/0", "digits/versions/x",
                                  "-lead", "a@b@c", "x" * 65])
def test_bad_references_are_400s(text):
    with pytest.raises(RegistryError) as caught:
        parse_ref(text)
    assert caught.value.status == 400


def test_the_session_cache_keeps_the_most_recently_used(tmp_path, monkeypatch):
    cache = Sessions(size=2)
    monkeypatch.setattr(cache, "_load", lambda path: object())
    for key in ("a", "b", "a", "c"):  # b is the least recently used when c comes
        cache.get(key, tmp_path)
    assert "a" in cache and "c" in cache and "b" not in cache and cache.loads == 3


def test_a_versions_file_is_fetched_only_on_a_cache_miss_and_a_missing_one_is_a_409(tmp_path, monkeypatch):
    """The session cache is asked first: the model file (a local copy of an object-store one) is looked up only when
    the session is not cached; a ready version whose file is gone answers 409 saying so, not a 500."""
    from trainq.service.objects import FileStore, model_key
    from trainq.service.registry import RegistryError, session_for

    store, cache, opened = FileStore(tmp_path), Sessions(), []
    monkeypatch.setattr(cache, "_load", lambda path: opened.append(path) or object())
    with pytest.raises(RegistryError) as gone:
        session_for(cache, store, "a" * 32)
    assert gone.value.status == 409 and "gone" in str(gone.value) and opened == []
    store.put(model_key("b" * 32, "model.onnx"), b"onnx")
    first = session_for(cache, store, "b" * 32)
    store.delete(model_key("b" * 32, "model.onnx"))
    assert session_for(cache, store, "b" * 32) is first  # cached: the file is not looked at again
    assert opened == [tmp_path / "models" / ("b" * 32) / "model.onnx"]


def _near_misses():
    """Requests one mistake away from good ones, and arbitrary JSON: each either checks out or is an InputError."""
    from hypothesis import strategies as st

    from tests.service.test_fuzz import json_values

    good_v2 = {"inputs": [{"name": "x", "shape": [2, 3], "datatype": "FP32", "data": [1, 2, 3, 4, 5, 6]}],
               "outputs": [{"name": "label"}], "id": "a"}
    good_records = {"records": [{"a": 1, "b": 2, "c": 3}]}

    @st.composite
    def mutate(draw):
        base = json.loads(json.dumps(draw(st.sampled_from([good_v2, good_records]))))
        node, key = base, None
        while True:
            keys = list(node) if isinstance(node, dict) else list(range(len(node)))
            if not keys:
                break
            key = draw(st.sampled_from(keys))
            if not isinstance(node[key], (dict, list)) or draw(st.booleans()):
                break
            node = node[key]
        if key is not None:
            node[key] = draw(json_values)
        return base

    return st.one_of(json_values, mutate())


def test_any_request_is_checked_or_refused_with_paths_never_crashes():
    from hypothesis import given, settings

    @settings(max_examples=400, deadline=None)
    @given(_near_misses())
    def check(body):
        for call in (v2_inputs, record_inputs):
            try:
                out = call(body, SIGNATURE, 10)
            except InputError as exc:
                assert exc.errors and all(e["path"] and e["message"] for e in exc.errors)
            else:
                x = (out[0] if isinstance(out, tuple) else out)["x"]
                assert x.dtype == np.float32 and x.shape[1:] == (3,) and np.isfinite(x).all()

    check()


def test_a_number_beyond_float32_is_named_not_turned_into_infinity():
    big = {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP64", "data": [1e39, 2, 3]}]}
    assert errors_of(v2_inputs, big, SIGNATURE, 10)[0][0] == "inputs[0].data[0]"
    assert errors_of(record_inputs, {"records": [{"a": 1, "b": -1e300, "c": 3}]}, SIGNATURE, 10) == [
        ("records[0].b", "-1e+300 is beyond float32's range (±3.4e+38)")]
    assert errors_of(record_inputs, {"inputs": [[1, 2, 3], [1, 2, 10**40]]}, SIGNATURE, 10)[0][0] == "inputs[1][2]"


def _classifier_run(p: np.ndarray) -> dict[str, np.ndarray]:
    """What a sampling classifier's graph answers for T samples p (T, N, K)."""
    mean = p.mean(0)
    total = -(mean * np.log(mean)).sum(1)
    expected = -(p * np.log(p)).sum(2).mean(0)
    return {"label": mean.argmax(1), "probabilities": mean, "entropy": total, "mutual_information": total - expected}


def _regression_run(values: np.ndarray, noise: np.ndarray) -> dict[str, np.ndarray]:
    """What a sampling regression's graph answers for T sampled means (T, N, 1) and noise variances (T, N, 1)."""
    epistemic = values.var(0)
    return {"value": values.mean(0), "std": np.sqrt(epistemic + noise.mean(0)), "epistemic_std": np.sqrt(epistemic)}


def test_pooled_runs_answer_as_all_their_samples_at_once():
    """Three runs of 20 samples pooled equal one run of the 60: probabilities, entropy and mutual information; a
    regression's mean, epistemic std (law of total variance) and predictive std, with a noise learned per row."""
    from trainq.service.inference import pool

    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, (60, 5, 3)) + rng.normal(0, 1, (1, 5, 3))
    p = np.exp(logits) / np.exp(logits).sum(2, keepdims=True)
    pooled = pool([_classifier_run(p[i:i + 20]) for i in (0, 20, 40)])
    whole = _classifier_run(p)
    for name in whole:
        assert np.allclose(pooled[name], whole[name], atol=1e-5), name
    assert not np.allclose(_classifier_run(p[:20])["mutual_information"], whole["mutual_information"], atol=1e-3)

    values = rng.normal(0, 1, (60, 4, 1)) * np.array([0.1, 0.5, 1.0, 2.0]).reshape(1, 4, 1) + 3.0
    noise = rng.uniform(0.01, 0.2, (60, 4, 1))
    pooled = pool([_regression_run(values[i:i + 20], noise[i:i + 20]) for i in (0, 20, 40)])
    whole = _regression_run(values, noise)
    for name in whole:
        assert np.allclose(pooled[name], whole[name], atol=1e-5), name


def test_a_request_asks_for_a_multiple_of_the_samples_a_graph_draws():
    from trainq.service.inference import sample_runs

    bayes = {**SIGNATURE, "uncertainty": {"method": "variational", "samples": 50}}
    assert sample_runs({}, bayes) == 1 and sample_runs({"samples": 50}, bayes) == 1
    assert sample_runs({"samples": 200}, bayes) == 4
    for asked in (30, 75, 5000, 0, -50, "100", True, 2.5):
        [(path, message)] = errors_of(sample_runs, {"samples": asked}, bayes)
        assert path == "parameters.samples" and ("multiple of 50" in message), message
    [(_, message)] = errors_of(sample_runs, {"samples": 100}, SIGNATURE)
    assert "draws no samples" in message
    ensemble = {**SIGNATURE, "uncertainty": {"method": "ensemble", "samples": 5}}
    [(_, message)] = errors_of(sample_runs, {"samples": 10}, ensemble)
    assert "5 members" in message
    [(path, _)] = errors_of(record_inputs, {"inputs": [[1, 2, 3]], "parameters": 5}, SIGNATURE, 10)
    assert path == "parameters"


TABLE = {"inputs": [{"name": "plan", "datatype": "BYTES", "shape": [-1, 1]},
                    {"name": "tenure", "datatype": "FP32", "shape": [-1, 1]},
                    {"name": "zip", "datatype": "FP32", "shape": [-1, 1]}],
         "features": ["plan", "tenure", "zip"], "ignored_columns": ["id", "churned"],
         "columns": [{"name": "plan", "kind": "category", "required": False, "categories": ["pro", "free"]},
                     {"name": "tenure", "kind": "number", "required": False},
                     {"name": "zip", "kind": "number", "required": True}],
         "outputs": [{"name": "label", "datatype": "INT64", "shape": [-1]}], "class_names": ["no", "yes"]}


def test_a_table_models_records_take_raw_values_by_column_in_any_order():
    feeds = record_inputs({"records": [{"zip": 10, "plan": "pro", "tenure": 3, "id": "C1", "churned": "no"},
                                       {"tenure": None, "zip": 11.5},
                                       {"plan": 7, "tenure": True, "zip": 12}]}, TABLE, 10)
    assert feeds["plan"].tolist() == [["pro"], [""], ["7"]]  # missing: "" (the graph fills it); numbers as text
    assert feeds["plan"].dtype == object and feeds["tenure"].dtype == np.float32
    assert feeds["tenure"][0, 0] == 3 and math.isnan(feeds["tenure"][1, 0]) and feeds["tenure"][2, 0] == 1
    found = errors_of(record_inputs, {"records": [{"plan": "pro", "tenure": "long", "zip": None, "tenur": 1},
                                                  {"plan": {"a": 1}, "zip": 1e39}]}, TABLE, 10)
    assert found == [("records[0].tenure", "a string where a number goes ('long'; a number's missing value is null)"),
                     ("records[0].zip", "is required: rows without it were dropped in training (missing: drop_row)"),
                     ("records[0].tenur", "is not a column of this model; did you mean 'tenure'?"),
                     ("records[1].plan", "an object where a category's value (text or a number) goes"),
                     ("records[1].zip", "1e+39 is beyond float32's range (±3.4e+38)")]
    assert "send 'records'" in errors_of(record_inputs, {"inputs": [[1, 2, 3]]}, TABLE, 10)[0][1]


def test_a_table_models_v2_tensors_are_one_per_column_bytes_for_categories():
    body = {"inputs": [{"name": "zip", "shape": [2], "datatype": "INT64", "data": [1, 2]},
                       {"name": "plan", "shape": [2, 1], "datatype": "BYTES", "data": ["pro", "free"]}]}
    feeds, _, _ = v2_inputs(body, TABLE, 10)
    assert feeds["plan"].tolist() == [["pro"], ["free"]] and feeds["zip"].tolist() == [[1], [2]]
    assert np.isnan(feeds["tenure"]).all()  # a column not sent: missing in every row
    blob = b"".join(len(v).to_bytes(4, "little") + v for v in (b"pro", b"caf\xc3\xa9"))  # tritonclient's binary BYTES
    binary = {"inputs": [{"name": "plan", "shape": [2, 1], "datatype": "BYTES",
                          "parameters": {"binary_data_size": len(blob)}},
                         {"name": "zip", "shape": [2, 1], "datatype": "FP32", "data": [1, 2]}]}
    feeds, _, _ = v2_inputs(binary, TABLE, 10, {0: blob})
    assert feeds["plan"].tolist() == [["pro"], ["caf\u00e9"]]
    wrong = {"inputs": [{"name": "plan", "shape": [2], "datatype": "FP32", "data": [1, 2]},
                        {"name": "zip", "shape": [3], "datatype": "FP32", "data": [1, 2, 3]}]}
    assert [p for p, _ in errors_of(v2_inputs, wrong, TABLE, 10)] == ["inputs[0].datatype", "inputs[1].shape"]
