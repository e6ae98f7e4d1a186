"""The model registry on real processes: a worker trains, registers and exports; the service answers predictions
over the Open Inference Protocol (a standard v2 client, unchanged) and over /predict, with onnxruntime only."""

from __future__ import annotations

import csv
import io
import time

import numpy as np
import onnxruntime as ort
import pytest
import requests

from tests.specs import mlp, with_
from trainq.models.datasets import raw, split_indices
from trainq.models.engine import build
from trainq.models.export import raw_rows
from trainq.models.spec import Uploaded, parse_spec

pytestmark = pytest.mark.integration

DIGITS = with_(mlp(hidden=(64,), epochs=6, early_stopping={"patience": 3}), register_as="digits")


def wait_ready(stack, ref: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answer = stack.http.get(f"{stack.url}/api/v1/models/{ref}", timeout=10)
        if answer.ok:
            version = answer.json()
            version = version["versions"][0] if "versions" in version else version
            if version["state"] in ("ready", "failed"):
                return version
        time.sleep(0.3)
    raise TimeoutError(f"{ref} never became ready:\n{stack.logs()}")


def wait_batch(stack, location: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch = stack.http.get(stack.url + location, timeout=10).json()
        if batch["status"] in ("succeeded", "failed"):
            return batch
        time.sleep(0.2)
    raise TimeoutError(f"batch {location} never finished:\n{stack.logs()}")


def split_of(spec: dict, arrays=None):
    state = build(parse_spec(spec), device="cpu", arrays=arrays)
    ds = state.spec.dataset
    _, y = raw(ds, arrays)
    return raw_rows(state, "test", arrays), y[split_indices(len(y), ds.val_fraction, ds.test_fraction, ds.seed)[2]]


@pytest.fixture(scope="module")
def digits(stack):
    job = stack.wait(stack.submit(DIGITS))
    assert job["status"] == "succeeded", stack.logs()
    version = wait_ready(stack, "digits/versions/1")
    assert version["state"] == "ready", version
    return job, version


def test_register_as_exports_a_verified_version_that_reproduces_the_jobs_accuracy_over_v2(stack, digits):
    import tritonclient.http as httpclient

    job, version = digits
    assert version["job_id"] == job["id"] and version["task"] == "classification"
    assert version["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 64]}]
    assert version["class_names"] == [str(i) for i in range(10)] and version["onnx_size"] > 10_000
    events = [e["message"] for e in stack.get(f"/api/v1/jobs/{job['id']}/events")["events"]]
    assert any("registered as digits version 1" in m for m in events)

    x, y = split_of(DIGITS)
    client = httpclient.InferenceServerClient(url=stack.url.removeprefix("http://"))
    auth = {"Authorization": stack.http.headers["Authorization"]}
    assert client.is_server_live() and client.is_model_ready("digits", headers=auth)
    meta = client.get_model_metadata("digits", headers=auth)
    assert meta["inputs"][0]["shape"] == [-1, 64] and [o["name"] for o in meta["outputs"]] == ["label",
                                                                                               "probabilities"]
    tensor = httpclient.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=False)
    wanted = [httpclient.InferRequestedOutput("label", binary_data=False)]
    result = client.infer("digits", [tensor], outputs=wanted, request_id="r-1", headers=auth)
    labels = result.as_numpy("label")
    assert result.get_response()["id"] == "r-1" and result.as_numpy("probabilities") is None
    accuracy = float((labels == y).mean())
    assert accuracy == pytest.approx(job["metrics"]["test_accuracy"], abs=1e-6)  # the same count (float32)
    binary = httpclient.InferInput("x", list(x.shape), "FP32")
    binary.set_data_from_numpy(x)  # tritonclient's default: the binary data extension, both ways
    both = client.infer("digits", [binary], headers=auth)
    assert np.array_equal(both.as_numpy("label"), labels) and both.as_numpy("probabilities").shape == (len(x), 10)

    onnx_file = stack.http.get(f"{stack.url}/api/v1/models/digits/versions/1/onnx", timeout=10)
    session = ort.InferenceSession(onnx_file.content, providers=["CPUExecutionProvider"])
    local_labels, local_probabilities = session.run(None, {"x": x})
    assert np.array_equal(local_labels, labels)
    nested = stack.http.post(f"{stack.url}/v2/models/digits/versions/1/infer", timeout=10, json={
        "inputs": [{"name": "x", "shape": [3, 64], "datatype": "FP64", "data": x[:3].tolist()}]}).json()
    probabilities = next(o for o in nested["outputs"] if o["name"] == "probabilities")
    assert probabilities["shape"] == [3, 10] and nested["model_version"] == "1"
    assert np.allclose(np.reshape(probabilities["data"], (3, 10)), local_probabilities[:3], atol=1e-6)


def test_bad_v2_requests_are_400s_that_name_every_field(stack, digits):
    infer = f"{stack.url}/v2/models/digits/infer"
    answer = stack.http.post(infer, timeout=10, json={
        "inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "FP32", "data": [0] * 64},
                   {"name": "x", "shape": [2, 63], "datatype": "BYTES", "data": [0] * 126}],
        "outputs": [{"name": "logits"}]})
    assert answer.status_code == 400
    body = answer.json()
    assert set(body) == {"error", "errors"}
    paths = [e["path"] for e in body["errors"]]
    assert paths == ["inputs[0].name", "inputs[1].shape", "inputs[1].datatype", "outputs[0].name"]
    bad_values = stack.http.post(infer, timeout=10, data='{"inputs": [{"name": "x", "shape": [1, 64], '
                                 '"datatype": "FP32", "data": [NaN, "a"' + ", 0" * 62 + "]}]}",
                                 headers={"Content-Type": "application/json"})
    assert bad_values.status_code == 400
    assert [e["path"] for e in bad_values.json()["errors"]] == ["inputs[0].data[0]", "inputs[0].data[1]"]
    too_many = stack.http.post(infer, timeout=10, json={"inputs": [{"name": "x", "shape": [10_001, 64],
                                                                    "datatype": "FP32", "data": [0]}]})
    assert too_many.status_code == 400 and "TRAINQ_MAX_PREDICT_ROWS" in too_many.json()["error"]
    for path, status in (("/v2/models/nope/infer", 404), ("/v2/models/digits/versions/9/infer", 404),
                         ("/v2/models/digits@gone/infer", 404), ("/v2/models/bad name!/infer", 400)):
        answer = stack.http.post(stack.url + path, timeout=10, json={"inputs": []})
        assert answer.status_code == status and "error" in answer.json(), (path, answer.text)
    assert stack.http.get(f"{stack.url}/v2/health/ready", timeout=10).json() == {"ready": True}
    # every prediction counted by model, version and code (/metrics: Prometheus' text format)
    from prometheus_client.parser import text_string_to_metric_families

    text = requests.get(f"{stack.url}/metrics", timeout=10).text
    counted = {tuple(sorted(s.labels.items())): s.value for f in text_string_to_metric_families(text)
               for s in f.samples if s.name == "trainq_predictions_total"}
    assert counted[(("code", "400"), ("model", "digits"), ("version", "1"))] >= 3
    assert counted[(("code", "404"), ("model", "nope"), ("version", ""))] == 1
    assert "trainq_prediction_duration_seconds_bucket" in text


def test_aliases_move_which_version_answers_and_guard_deletion(stack, digits):
    import tritonclient.http as httpclient

    second = stack.wait(stack.submit(with_(DIGITS, **{"model.layers": mlp(hidden=(32,))["model"]["layers"]})))
    assert second["status"] == "succeeded"
    assert wait_ready(stack, "digits/versions/2")["state"] == "ready"
    # while a worker exports a version the protocol says it is not ready, and so does a standard client, which reads
    # the status code (an export takes seconds: torch's exporter, then the check against onnxruntime)
    client = httpclient.InferenceServerClient(url=stack.url.removeprefix("http://"))
    auth = {"Authorization": stack.http.headers["Authorization"]}
    registered = stack.http.post(f"{stack.url}/api/v1/models", json={"name": "pending", "job_id": second["id"]},
                                 timeout=10)
    assert registered.status_code == 201 and registered.json()["state"] == "exporting"
    assert not client.is_model_ready("pending", headers=auth)
    assert not client.is_model_ready("pending", "1", headers=auth)
    assert wait_ready(stack, "pending/versions/1")["state"] == "ready"
    assert client.is_model_ready("pending", headers=auth) and client.is_model_ready("pending", "1", headers=auth)
    rows = {"inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}]}
    put = stack.http.put(f"{stack.url}/api/v1/models/digits/aliases/champion", json={"version": 1}, timeout=10)
    assert put.status_code == 200 and put.json()["previous"] is None
    answer = stack.http.post(f"{stack.url}/v2/models/digits@champion/infer", json=rows, timeout=10).json()
    assert answer["model_version"] == "1"
    moved = stack.http.put(f"{stack.url}/api/v1/models/digits/aliases/champion", json={"version": 2}, timeout=10)
    assert moved.json() == {"model": "digits", "alias": "champion", "version": 2, "previous": 1}
    answer = stack.http.post(f"{stack.url}/v2/models/digits@champion/infer", json=rows, timeout=10).json()
    assert answer["model_version"] == "2"
    assert stack.get("/api/v1/models/digits")["aliases"] == {"champion": 2}
    refused = stack.http.delete(f"{stack.url}/api/v1/models/digits/versions/2", timeout=10)
    assert refused.status_code == 409 and "@champion" in refused.json()["message"]
    audit = stack.get("/api/v1/audit?limit=50")["entries"]
    moves = [(e["detail"]["version"], e["detail"]["previous"]) for e in audit if e["action"] == "alias"]
    assert moves[:2] == [(2, 1), (1, None)]  # newest first: every move is in the audit log

    bob = stack.user_token("bob")
    as_bob = {"Authorization": f"Bearer {bob}"}
    for method, path in (("GET", "/api/v1/models/digits"), ("POST", "/v2/models/digits/infer"),
                         ("GET", "/v2/models/digits")):
        answer = stack.http.request(method, stack.url + path, json=rows, headers=as_bob, timeout=10)
        assert answer.status_code == 404, (path, answer.text)
    assert stack.http.get(f"{stack.url}/api/v1/models", headers=as_bob, timeout=10).json() == {"models": []}


def test_a_csv_with_named_columns_predicts_from_records_by_name(stack):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(240, 3)) * [1.0, 10.0, 100.0] + [0, 50, 500]
    y = (x[:, 0] + x[:, 1] / 10 > 5).astype(int)
    text = "length,width,height,kind\n"
    text += "".join(f"{a:.4f},{b:.4f},{c:.4f},{'big' if t else 'small'}\n" for (a, b, c), t in zip(x, y))
    upload = stack.http.post(f"{stack.url}/api/v1/datasets", params={"name": "plants"}, data=text.encode(),
                             headers={"Content-Type": "text/csv"}, timeout=30)
    assert upload.status_code == 201, upload.text
    spec = with_(mlp(outputs=2, epochs=15), dataset={"name": "upload", "upload": "plants", "seed": 0})
    job = stack.wait(stack.submit(spec))
    assert job["status"] == "succeeded", stack.logs()
    registered = stack.http.post(f"{stack.url}/api/v1/models", json={"name": "plants", "job_id": job["id"]},
                                 timeout=10)
    assert registered.status_code == 201 and registered.json()["state"] == "exporting"
    version = wait_ready(stack, "plants/versions/1")
    assert version["features"] == ["length", "width", "height"] and version["class_names"] == ["big", "small"]

    names = upload.json()["class_names"]
    labels = np.array([names.index("big" if t else "small") for t in y])
    ds = parse_spec(spec, uploads=lambda name: Uploaded("plants", 1, "arrays", 240, 2, shape=(3,))).dataset
    test = split_indices(240, ds.val_fraction, ds.test_fraction, ds.seed)[2]
    records = [dict(zip(["length", "width", "height"], map(float, row))) for row in x[test]]
    answer = stack.http.post(f"{stack.url}/api/v1/models/plants/predict", json={"records": records}, timeout=10)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["version"] == 1 and len(body["request_id"]) == 32
    predicted = [names.index(p["label"]) for p in body["predictions"]]
    accuracy = float(np.mean(np.array(predicted) == labels[test]))
    assert accuracy == pytest.approx(job["metrics"]["test_accuracy"], abs=1e-6)
    assert set(body["predictions"][0]["probabilities"]) == {"big", "small"}

    batch = stack.http.post(f"{stack.url}/api/v1/models/plants/batch", json={"dataset": "plants"}, timeout=10)
    assert batch.status_code == 202, batch.text
    done = wait_batch(stack, batch.headers["Location"])
    assert done["status"] == "succeeded" and done["rows"] == done["done"] == 240 and done["bad_rows"] == 0, done
    scored = list(csv.DictReader(io.StringIO(stack.http.get(stack.url + done["output_url"], timeout=10).text)))
    assert [r["row"] for r in scored[:3]] == ["1", "2", "3"]
    assert list(scored[0]) == ["row", "length", "width", "height", "kind", "label", "p_big", "p_small"]
    by_row = {int(r["row"]): r["label"] for r in scored}
    assert [by_row[i + 1] for i in test] == [p["label"] for p in body["predictions"]]  # the endpoint's answers

    raw_body = '{"records": [{"length": 1.0, "width": "wide", "height": 2.0}, {"length": 1.0, "height": NaN}, ' \
               '{"length": 1.0, "width": 2.0, "height": 3.0, "colour": 4}]}'
    answer = stack.http.post(f"{stack.url}/api/v1/models/plants/predict", data=raw_body,
                             headers={"Content-Type": "application/json"}, timeout=10)
    assert answer.status_code == 422  # a missing width and a NaN height are missing values (filled), not errors
    assert [e["path"] for e in answer.json()["errors"]] == ["records[0].width", "records[2].colour"]
    assert "a string where a number goes" in answer.json()["errors"][0]["message"]
    assert "its columns are length, width, height" in answer.json()["errors"][1]["message"]

    # A file of its own: columns in another order, an id carried through, bad rows reported by line number
    lines = ["id,height,width,length", "a,500,50,1", "b,510,oops,2", "c,520", "d,530,51,nan", "e,540,52,3"]
    batch = stack.http.post(f"{stack.url}/api/v1/models/plants/batch", data="\n".join(lines).encode(),
                            headers={"Content-Type": "text/csv"}, timeout=10)
    done = wait_batch(stack, batch.headers["Location"])
    assert (done["status"], done["rows"], done["bad_rows"]) == ("succeeded", 5, 2), done
    assert done["problems"] == [{"row": 3, "message": "width: 'oops' is not a number"},
                                {"row": 4, "message": "the row has the wrong number of fields"}]
    scored = list(csv.DictReader(io.StringIO(stack.http.get(stack.url + done["output_url"], timeout=10).text)))
    assert [(r["row"], r["id"]) for r in scored] == [("2", "a"), ("5", "d"), ("6", "e")]
    assert list(scored[0])[:5] == ["row", "id", "height", "width", "length"]  # the input's columns, in its order
    single = stack.http.post(f"{stack.url}/api/v1/models/plants/predict", timeout=10,
                             json={"records": [{"length": 1, "width": 50, "height": 500}]}).json()
    assert scored[0]["label"] == single["predictions"][0]["label"]
    wrong = stack.http.post(f"{stack.url}/api/v1/models/plants/batch", data=b"length,width\n1,2\n",
                            headers={"Content-Type": "text/csv"}, timeout=10)
    failed = wait_batch(stack, wrong.headers["Location"])
    assert failed["status"] == "failed" and "the table has no column height" in failed["error"]


def test_a_mixture_density_model_answers_its_mixture_and_moments(stack):
    spec = {"name": "mdn", "dataset": {"name": "inverse_sine", "n_samples": 600, "seed": 0},
            "model": {"layers": [{"type": "dense", "units": 16}, {"type": "activation", "fn": "tanh"},
                                 {"type": "mdn", "components": 3}]},
            "loss": {"type": "mdn_nll"}, "optimizer": {"type": "adam", "lr": 0.01},
            "training": {"epochs": 8, "batch_size": 64, "seed": 0}, "register_as": "sine"}
    job = stack.wait(stack.submit(spec))
    assert job["status"] == "succeeded", stack.logs()
    assert wait_ready(stack, "sine/versions/1")["task"] == "mixture"
    x, y = split_of(spec)
    answer = stack.http.post(f"{stack.url}/api/v1/models/sine/predict", json={"inputs": x.tolist()}, timeout=10)
    assert answer.status_code == 200, answer.text
    rows = answer.json()["predictions"]
    values = np.array([r["value"] for r in rows])
    assert float(np.abs(values - y).mean()) == pytest.approx(job["metrics"]["test_mae"], rel=1e-4)
    first = rows[0]
    assert len(first["mixture"]["pi"]) == 3 and first["variance"] > 0
    assert first["value"] == pytest.approx(sum(p * m for p, m in zip(first["mixture"]["pi"], first["mixture"]["mu"])),
                                           rel=1e-4)


def test_the_command_line_registers_shows_aliases_predicts_and_exports(stack, digits, tmp_path):
    from click.testing import CliRunner

    from trainq.cli import main

    job, _ = digits
    auth = ["--url", stack.url, "--token", stack.http.headers["Authorization"][7:]]
    runner = CliRunner()
    registered = runner.invoke(main, ["model", "register", "cli-digits", job["id"], *auth])
    assert registered.exit_code == 0, registered.output
    assert registered.stdout.strip() == "cli-digits/versions/1 ready"
    moved = runner.invoke(main, ["model", "alias", "cli-digits", "champion", "1", *auth])
    assert moved.exit_code == 0 and moved.stdout.strip() == "cli-digits@champion -> version 1"
    listed = runner.invoke(main, ["model", "list", *auth]).stdout
    assert any(line.split()[:4] == ["cli-digits", "1", "1", "champion->1"] for line in listed.splitlines()), listed
    shown = runner.invoke(main, ["model", "show", "cli-digits@champion", *auth]).stdout
    assert "TEST_ACCURACY" in shown and f"{job['metrics']['test_accuracy']:.4f}" in shown
    assert "classes 0, 1, 2" in shown

    x, y = split_of(DIGITS)
    features = [f"pixel_{i // 8}_{i % 8}" for i in range(64)]  # scikit-learn's names of digits' columns
    (tmp_path / "rows.csv").write_text(",".join(features + ["truth"]) + "\n" + "".join(
        ",".join(f"{v:g}" for v in row) + f",{t}\n" for row, t in zip(x, y)))
    predicted = runner.invoke(main, ["predict", "cli-digits@champion", str(tmp_path / "rows.csv"), "--out",
                                     str(tmp_path / "out.csv"), *auth])
    assert predicted.exit_code == 0, predicted.output
    out = list(csv.DictReader((tmp_path / "out.csv").open()))
    assert len(out) == len(y) and set(out[0]) >= {"truth", "label", "p_0", "p_9"}
    right = sum(row["label"] == row["truth"] for row in out)
    assert right / len(out) == pytest.approx(job["metrics"]["test_accuracy"], abs=1e-6)

    exported = runner.invoke(main, ["export", "cli-digits/versions/1", "--onnx", str(tmp_path / "m.onnx"), *auth])
    assert exported.exit_code == 0, exported.output
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    assert float((session.run(["label"], {"x": x})[0] == y).mean()) == pytest.approx(right / len(out), abs=1e-9)
    from_job = runner.invoke(main, ["export", job["id"], "--onnx", str(tmp_path / "j.onnx"), *auth])
    assert from_job.exit_code == 0 and "checked against torch" in from_job.stdout, from_job.output

    mistakes = {("model", "show", "nope"): "no model 'nope'",
                ("model", "alias", "cli-digits", "Champion!", "1"): "is not an alias",
                ("model", "register", "cli-digits", "0" * 32): "no job",
                ("export", "nope/versions/x", "--onnx", "x.onnx"): "not a model reference",
                ("export", "runs/best.safetensors", "--onnx", "x.onnx"): "no such checkpoint file",
                ("predict", "cli-digits", str(tmp_path / "out.csv")): None}
    for args, said in mistakes.items():
        answer = runner.invoke(main, [*args, *auth])
        if said is None:  # out.csv has the features: it predicts; now a file without them
            assert answer.exit_code == 0
            continue
        assert answer.exit_code in (1, 2) and said in answer.output and "Traceback" not in answer.output, (
            args, answer.output)
    batched = runner.invoke(main, ["predict", "cli-digits@champion", str(tmp_path / "rows.csv"), "--batch", "--out",
                                   str(tmp_path / "batch.csv"), *auth])
    assert batched.exit_code == 0, batched.output
    scored = list(csv.DictReader((tmp_path / "batch.csv").open()))
    assert [r["label"] for r in scored] == [r["label"] for r in out]
    inputs = next(csv.reader((tmp_path / "rows.csv").open()))
    assert list(scored[0])[1:1 + len(inputs)] == inputs  # every input column kept, in its order, as /predict keeps
    (tmp_path / "short.csv").write_text("f0,f1\n1,2\n")  # named as the model's are not
    short = runner.invoke(main, ["predict", "cli-digits", str(tmp_path / "short.csv"), *auth])
    assert short.exit_code == 1 and "has no column pixel_0_0, pixel_0_1" in short.output
