"""Uploaded datasets: CSV and NPZ without pickle, clear errors, nothing half-stored, usable by name in a spec."""

from __future__ import annotations

import io
import os
import pickle

import numpy as np
import pytest

from tests.service.test_api import attempt_headers, claim
from trainq.service.uploads import dataset_path


def csv_bytes(rows: int = 40, label=lambda i: "yes" if i % 3 else "no") -> bytes:
    lines = ["height,weight,label"] + [f"{1.5 + i / 100},{50 + i},{label(i)}" for i in range(rows)]
    return "\n".join(lines).encode()


def npz_bytes(**arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def upload(client, name, data, **query):
    query_string = {"name": name, **query}
    return client.post("/api/v1/datasets", data=data, query_string=query_string,
                       content_type="application/octet-stream")


def spec_for(name: str, outputs: int) -> dict:
    return {"name": "on-upload", "dataset": {"name": "upload", "upload": name},
            "model": {"layers": [{"type": "dense", "units": 8}, {"type": "activation", "fn": "relu"},
                                 {"type": "dense", "units": outputs}]},
            "loss": {"type": "cross_entropy" if outputs > 1 else "mse"}, "optimizer": {"type": "adam"}}


def test_csv_upload_is_parsed_listed_and_usable_in_a_spec(client, app):
    answer = upload(client, "people", csv_bytes())
    assert answer.status_code == 201, answer.json
    d = answer.json
    assert (d["rows"], d["shape"], d["classes"], d["class_names"], d["task"]) == \
        (40, [2], 2, ["no", "yes"], "classification")
    stored = dataset_path(app.extensions["trainq"].store, d["id"])
    with np.load(stored, allow_pickle=False) as archive:
        assert archive["x"].shape == (40, 2) and archive["y"].tolist()[:3] == [0, 1, 1]
    assert [x["name"] for x in client.get("/api/v1/datasets").json["datasets"]] == ["people"]
    planned = client.post("/api/v1/jobs:validate", json=spec_for("people", 2))
    assert planned.status_code == 200 and planned.json["plan"]["input_shape"] == [2]
    wrong = client.post("/api/v1/jobs:validate", json=spec_for("people", 3))
    assert wrong.json["errors"][0]["message"] == "cross_entropy on upload needs 2 output units, got 3"


def test_a_form_upload_as_curl_f_sends_it_is_the_same_dataset(client):
    raw = upload(client, "as-body", csv_bytes()).json
    form = client.post("/api/v1/datasets", query_string={"name": "as-form"}, content_type="multipart/form-data",
                       data={"file": (io.BytesIO(csv_bytes()), "people.csv")})
    assert form.status_code == 201, form.json
    assert {k: form.json[k] for k in ("rows", "shape", "classes", "class_names", "sha256")} == \
        {k: raw[k] for k in ("rows", "shape", "classes", "class_names", "sha256")}
    two = client.post("/api/v1/datasets", query_string={"name": "two"}, content_type="multipart/form-data",
                      data={"a": (io.BytesIO(csv_bytes()), "a.csv"), "b": (io.BytesIO(csv_bytes()), "b.csv")})
    assert two.status_code == 400 and two.json["errors"] == [{"path": "file", "message": "one file part"}]
    assert "--data-binary" in two.json["message"]
    assert sorted(d["name"] for d in client.get("/api/v1/datasets").json["datasets"]) == ["as-body", "as-form"]


def test_npz_upload_of_images_and_regression_by_task(client):
    x = np.random.default_rng(0).random((20, 1, 4, 4)).astype(np.float32)
    answer = upload(client, "imgs", npz_bytes(x=x, y=np.arange(20) % 4))
    assert answer.status_code == 201 and answer.json["shape"] == [1, 4, 4] and answer.json["classes"] == 4
    answer = upload(client, "reg", npz_bytes(x=np.ones((10, 3)), y=np.linspace(0, 1, 10)))
    assert answer.json["task"] == "regression"
    answer = upload(client, "reg-csv", csv_bytes(label=lambda i: str(i * 0.5)), task="regression")
    assert answer.json["task"] == "regression" and answer.json["classes"] is None


def test_another_users_dataset_cannot_be_named_or_seen(client, client_as):
    upload(client, "mine", csv_bytes())
    bob = client_as("bob")
    assert bob.get("/api/v1/datasets").json["datasets"] == []
    answer = bob.post("/api/v1/jobs:validate", json=spec_for("mine", 2))
    assert answer.status_code == 422
    assert answer.json["errors"] == [{"path": "dataset.upload", "message": "no uploaded dataset named 'mine'"}]


@pytest.mark.parametrize("data, query, fragment", [
    (b"a,b\n1,2\n", {}, "at least 8"),
    (b"a,b,label\n" + b"1,x,0\n" * 10, {}, "row 2, column 'b': 'x' is not a number"),
    (b"a,b,label\n" + b"1,2\n" * 10, {}, "row 2: 2 fields, the header has 3"),
    (b"a,b,label\n" + b"1,nan,0\n" * 10, {}, "is not finite"),
    (b"a,b\n" + b"1,2\n" * 10, {"target": "label"}, "no column named 'label'"),
    (b"\xff\xfe\x00garbage", {}, "not UTF-8"),
    (b"PK\x03\x04not really a zip", {}, "not a readable NPZ"),
])
def test_malformed_files_get_422_and_store_nothing(client, app, data, query, fragment):
    answer = upload(client, "bad", data, **query)
    assert answer.status_code == 422 and fragment in answer.json["message"], answer.json
    assert client.get("/api/v1/datasets").json["datasets"] == []
    folder = app.extensions["trainq"].storage / "datasets"
    assert not folder.exists() or list(folder.iterdir()) == []


def test_an_npz_carrying_a_pickle_is_refused_and_the_payload_never_runs(client, tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    x = np.empty(10, dtype=object)
    x[:] = [Payload()] * 10
    buffer = io.BytesIO()
    np.savez(buffer, x=x, y=np.arange(10))
    answer = upload(client, "evil", buffer.getvalue())
    assert answer.status_code == 422 and "pickle" in answer.json["message"]
    assert not marker.exists()
    raw = upload(client, "evil2", pickle.dumps(Payload()))
    assert raw.status_code == 422 and not marker.exists()


def test_row_limit_and_duplicate_names(client, app):
    app.extensions["trainq"].settings.max_dataset_rows = 30
    assert "more than the limit of 30" in upload(client, "big", csv_bytes(40)).json["message"]
    app.extensions["trainq"].settings.max_dataset_rows = 1000
    assert upload(client, "twice", csv_bytes()).status_code == 201
    assert upload(client, "twice", csv_bytes()).status_code == 409
    assert upload(client, "../etc", csv_bytes()).status_code == 422


def test_a_dataset_in_use_cannot_be_deleted(client, worker_headers):
    d = upload(client, "used", csv_bytes()).json
    job = client.post("/api/v1/jobs", json=spec_for("used", 2)).json
    c = claim(client, job["id"], worker_headers).json
    assert c["dataset"]["shape"] == [2] and c["dataset"]["classes"] == 2
    got = client.get(c["dataset"]["url"], headers=attempt_headers(worker_headers, c))
    with np.load(io.BytesIO(got.data), allow_pickle=False) as archive:
        assert archive["x"].shape == (40, 2)
    assert client.delete(f"/api/v1/datasets/{d['id']}").status_code == 409
    client.post(f"/api/v1/worker/attempts/{c['attempt_id']}/finish", json={"status": "succeeded"},
                headers=attempt_headers(worker_headers, c))
    assert client.delete(f"/api/v1/datasets/{d['id']}").status_code == 204
    assert client.get(f"/api/v1/datasets/{d['id']}").status_code == 404
