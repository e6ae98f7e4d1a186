"""Uploaded datasets: immutable versions; tables (CSV, TSV, Parquet, JSON Lines) profiled and kept as uploaded; NPZ
without pickle; clear errors naming the row, column or file; nothing half-stored; usable by name in a spec."""

from __future__ import annotations

import io
import json
import os
import pickle

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.service.test_api import attempt_headers, claim

CHURN_COLUMNS = ("id", "plan", "tenure", "monthly", "churned")


def churn_rows(n: int = 60) -> list[dict]:
    """A team's table as it comes: an identifier, a string category, missing values, a text target."""
    rows = []
    for i in range(n):
        rows.append({"id": f"C{i:05d}", "plan": None if i % 9 == 4 else ["pro", "basic", "free"][i % 3],
                     "tenure": None if i % 7 == 3 else i % 24, "monthly": round(20 + (i * 7.3) % 60, 2),
                     "churned": "yes" if i % 3 == 2 else "no"})
    return rows


def csv_of(rows: list[dict], sep: str = ",") -> bytes:
    lines = [sep.join(CHURN_COLUMNS)]
    for r in rows:
        lines.append(sep.join("" if r[c] is None else str(r[c]) for c in CHURN_COLUMNS))
    return ("\n".join(lines) + "\n").encode()


def parquet_of(rows: list[dict]) -> bytes:
    out = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), out)
    return out.getvalue()


def jsonl_of(rows: list[dict]) -> bytes:
    return "".join(json.dumps({k: v for k, v in r.items() if v is not None}) + "\n" for r in rows).encode()


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


def spec_for(name: str, outputs: int, **dataset) -> dict:
    return {"name": "on-upload", "dataset": {"name": "upload", "upload": name, **dataset},
            "model": {"layers": [{"type": "dense", "units": 8}, {"type": "activation", "fn": "relu"},
                                 {"type": "dense", "units": outputs}]},
            "loss": {"type": "cross_entropy" if outputs > 1 else "mse"}, "optimizer": {"type": "adam"}}


def stored_files(app) -> list:
    folder = app.extensions["trainq"].storage / "datasets"
    return sorted(folder.iterdir()) if folder.exists() else []


def test_a_churn_table_is_profiled_the_same_from_csv_parquet_and_json_lines(client):
    rows = churn_rows()
    profiles = {}
    for fmt, data in (("csv", csv_of(rows)), ("tsv", csv_of(rows, "\t")), ("parquet", parquet_of(rows)),
                      ("jsonl", jsonl_of(rows))):
        answer = upload(client, f"churn-{fmt}", data, target="churned")
        assert answer.status_code == 201, answer.json
        assert (answer.json["kind"], answer.json["source"], answer.json["version"]) == ("table", fmt, 1)
        profiles[fmt] = answer.json["profile"]
    columns = {c["name"]: c for c in profiles["csv"]["columns"]}
    assert {n: c["type"] for n, c in columns.items()} == {
        "id": "identifier", "plan": "category", "tenure": "number", "monthly": "number", "churned": "binary"}
    assert (columns["plan"]["missing"], columns["plan"]["distinct"]) == (7, 3)
    assert (columns["tenure"]["missing"], columns["tenure"]["min"], columns["tenure"]["max"]) == (9, 0, 23)
    assert "identifier" in columns["id"]["note"]
    assert profiles["csv"]["target"] == {"name": "churned", "task": "classification",
                                         "classes": {"no": 40, "yes": 20}}
    assert profiles["csv"]["rows"] == 60

    def essentials(p):
        return [(c["name"], c["type"], c["missing"], c["distinct"]) for c in p["columns"]], p["target"], p["rows"]
    for fmt in ("tsv", "parquet", "jsonl"):
        assert essentials(profiles[fmt]) == essentials(profiles["csv"]), fmt


def test_a_table_is_planned_by_its_columns_and_pinned_to_its_version_in_the_job(client, app):
    first = upload(client, "churn", csv_of(churn_rows()), target="churned").json
    spec = spec_for("churn", 2, missing={"strategy": "median", "indicator": True})
    planned = client.post("/api/v1/jobs:validate", json=spec)
    assert planned.status_code == 200, planned.json
    # plan one-hot: 3 slots + unknown + indicator = 5; tenure 1 + indicator; monthly 1 + indicator
    assert planned.json["plan"]["input_shape"] == [5 + 2 + 2]
    embedded = spec_for("churn", 2, columns={"plan": {"type": "category", "encoding": "embedding", "dim": 3}})
    layers = client.post("/api/v1/jobs:validate", json=embedded).json["plan"]["layers"]
    assert layers[0] == {"index": -1, "type": "embedding", "output_shape": [3 + 1 + 1], "params": (3 + 1) * 3,
                         "id": "columns", "inputs": ["in"], "path": "dataset.columns"}
    assert layers[1]["inputs"] == ["in"]  # the first layer reads the model's input, the columns embedded
    job = client.post("/api/v1/jobs", json=spec).json
    assert job["spec"]["dataset"]["upload"] == "churn@1"
    second = upload(client, "churn", csv_of(churn_rows(80)), target="churned")
    assert (second.status_code, second.json["version"]) == (201, 2)
    shown = client.get(f"/api/v1/jobs/{job['id']}").json
    assert shown["dataset"] == {"id": first["id"], "name": "churn", "version": 1, "ref": "churn@1",
                                "sha256": first["sha256"], "kind": "table"}
    again = upload(client, "churn", csv_of(churn_rows()), target="churned")
    assert (again.status_code, again.json["version"], again.json["existing"]) == (200, 1, True)
    assert len(stored_files(app)) == 2
    assert client.get("/api/v1/datasets/churn").json["version"] == 2
    assert client.get("/api/v1/datasets/churn@1").json["used_by"]["jobs"][0]["id"] == job["id"]
    latest = client.post("/api/v1/jobs", json=spec_for("churn", 2)).json
    assert latest["spec"]["dataset"]["upload"] == "churn@2"


@pytest.mark.parametrize("dataset, path, fragment", [
    ({"columns": {"plans": "category"}}, "dataset.columns.plans", "no column 'plans'"),
    ({"columns": {"plan": "number"}}, "dataset.columns.plan", "holds text"),
    ({"target": "nothing"}, "dataset.target", "no column 'nothing'"),
    ({"target": "id"}, "model.layers[2]", "cross_entropy on upload needs 60 output units"),
    ({"missing": "constant"}, "dataset.missing", "fill_value"),
    ({"preprocess": {"one_hot": [1]}}, "dataset.preprocess.one_hot", "dataset.columns: {plan: category}"),
])
def test_a_spec_naming_what_the_table_lacks_gets_422_with_the_path(client, dataset, path, fragment):
    upload(client, "churn", csv_of(churn_rows()), target="churned")
    answer = client.post("/api/v1/jobs:validate", json=spec_for("churn", 2, **dataset))
    assert answer.status_code == 422
    assert any(e["path"] == path and fragment in e["message"] for e in answer.json["errors"]), answer.json


def test_the_run_page_of_a_job_with_column_choices_lists_each_choice(client):
    upload(client, "churn", csv_of(churn_rows()), target="churned")
    spec = spec_for("churn", 2, columns={"plan": {"type": "category", "encoding": "embedding", "dim": 3}})
    job = client.post("/api/v1/jobs", json=spec).json
    page = client.get(f"/jobs/{job['id']}", headers={"Accept": "text/html"})
    assert page.status_code == 200
    text = page.get_data(as_text=True)
    assert "dataset.columns.plan.encoding" in text and "dataset.columns.plan.dim" in text


def test_another_target_of_the_same_version_is_chosen_in_the_spec(client):
    upload(client, "churn", csv_of(churn_rows()), target="churned")
    planned = client.post("/api/v1/jobs:validate", json=spec_for("churn", 3, target="plan"))
    assert planned.status_code == 200, planned.json
    assert planned.json["plan"]["task"] == "classification"
    regression = client.post("/api/v1/jobs:validate", json=spec_for("churn", 1, target="monthly"))
    assert regression.json["plan"]["task"] == "regression", regression.json


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
    assert answer.json["kind"] == "arrays"
    answer = upload(client, "reg", npz_bytes(x=np.ones((10, 3)), y=np.linspace(0, 1, 10)))
    assert answer.json["task"] == "regression"
    answer = upload(client, "reg-csv", csv_bytes(label=lambda i: str(i * 0.5)), task="regression")
    assert answer.json["task"] == "regression" and answer.json["classes"] is None


def test_another_users_dataset_cannot_be_named_or_seen(client, client_as):
    upload(client, "mine", csv_bytes())
    bob = client_as("bob")
    assert bob.get("/api/v1/datasets").json["datasets"] == []
    assert bob.get("/api/v1/datasets/mine").status_code == 404
    answer = bob.post("/api/v1/jobs:validate", json=spec_for("mine", 2))
    assert answer.status_code == 422
    [error] = answer.json["errors"]
    assert error["path"] == "dataset.upload" and error["message"].startswith("no uploaded dataset named 'mine': ")
    assert "trainq dataset upload FILE --name mine" in error["message"]


def nested_parquet() -> bytes:
    out = io.BytesIO()
    pq.write_table(pa.table({"a": [[1, 2]] * 10, "label": [0, 1] * 5}), out)
    return out.getvalue()


@pytest.mark.parametrize("data, query, fragment", [
    (b"a,b\n1,2\n", {}, "at least 8"),
    (b"a,b,label\n" + b"1,2,0\n" * 4 + b"1,2,0,9\n" + b"1,2,1\n" * 5, {}, "line 6: 4 fields, the header has 3"),
    (b"a,b\n" + b"1,2\n" * 10, {"target": "label"}, "no column named 'label'"),
    (b"a,label\n" + b"1,same\n" * 10, {}, "one class ('same')"),
    (b"a,label\n" + b"1,x\n2,y\n" * 6, {"task": "regression"}, "regression needs numbers"),
    (b"\xff\xfe\x00garbage", {}, "not a format trainq reads"),
    (b"PK\x03\x04not really a zip", {}, "not a readable zip"),
    (b"", {}, "the file is empty"),
    (b'{"a": 1, "label": 0}\n{"a": {"x": 1}, "label": 1}\n', {}, "row 2, field 'a'"),
    (b'[{"a": 1}]', {}, "JSON Lines"),
    (nested_parquet(), {}, "column 'a' holds nested values"),
])
def test_malformed_files_get_422_and_store_nothing(client, app, data, query, fragment):
    answer = upload(client, "bad", data, **query)
    assert answer.status_code == 422 and fragment in answer.json["message"], answer.json
    assert answer.json["errors"][0]["path"] == "(file)"
    assert client.get("/api/v1/datasets").json["datasets"] == []
    assert stored_files(app) == []
    assert list((app.extensions["trainq"].settings.data_dir / "tmp").iterdir()) == []  # no upload left behind


def test_missing_values_and_nan_text_are_read_as_missing_not_refused(client):
    data = b"a,b,label\n" + b"".join(f"{i},{'NaN' if i % 2 else i * 2},{i % 2}\n".encode() for i in range(12))
    answer = upload(client, "nans", data)
    assert answer.status_code == 201, answer.json
    b = next(c for c in answer.json["profile"]["columns"] if c["name"] == "b")
    assert (b["type"], b["missing"]) == ("number", 6)


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


def test_row_limit_and_names(client, app):
    app.extensions["trainq"].settings.max_dataset_rows = 30
    assert "more than 30 rows" in upload(client, "big", csv_bytes(40)).json["message"]
    app.extensions["trainq"].settings.max_dataset_rows = 0
    assert upload(client, "big", csv_bytes(40)).status_code == 201
    assert upload(client, "../etc", csv_bytes()).status_code == 422
    assert upload(client, "with@2", csv_bytes()).status_code == 422


def test_a_dataset_version_a_job_used_cannot_be_deleted(client, worker_headers):
    d = upload(client, "used", csv_bytes()).json
    job = client.post("/api/v1/jobs", json=spec_for("used", 2)).json
    c = claim(client, job["id"], worker_headers).json
    assert (c["dataset"]["kind"], c["dataset"]["version"], c["dataset"]["classes"]) == ("table", 1, 2)
    got = client.get(c["dataset"]["url"], headers=attempt_headers(worker_headers, c))
    assert got.data == csv_bytes()  # the table as uploaded
    client.post(f"/api/v1/worker/attempts/{c['attempt_id']}/finish", json={"status": "succeeded"},
                headers=attempt_headers(worker_headers, c))
    refused = client.delete("/api/v1/datasets/used@1")
    assert refused.status_code == 409 and job["id"] in refused.json["message"]
    assert refused.json["used_by"]["jobs"][0]["id"] == job["id"]
    assert client.delete(f"/api/v1/jobs/{job['id']}").status_code == 204
    assert client.delete(f"/api/v1/datasets/{d['id']}").status_code == 204
    assert client.get(f"/api/v1/datasets/{d['id']}").status_code == 404


def test_an_upload_in_parts_is_the_same_version_as_the_whole_file(client, app, client_as):
    whole = csv_of(churn_rows(200))
    started = client.post("/api/v1/datasets/uploads", query_string={"name": "parts", "target": "churned"})
    assert started.status_code == 201 and started.json["direct"] is False
    base = f"/api/v1/datasets/uploads/{started.json['id']}"
    third = len(whole) // 3
    pieces = [whole[:third], whole[third:2 * third], whole[2 * third:]]
    for number in (2, 3):  # in any order
        sent = client.put(f"{base}/parts/{number}", data=pieces[number - 1], content_type="application/octet-stream")
        assert sent.status_code == 200 and sent.json["size"] == len(pieces[number - 1])
    gap = client.post(f"{base}/complete")
    assert gap.status_code == 422 and "part 1 is missing" in gap.json["message"]
    assert client.get("/api/v1/datasets").json["datasets"] == []  # and the upload is gone: start again

    started = client.post("/api/v1/datasets/uploads", query_string={"name": "parts", "target": "churned"}).json
    base = f"/api/v1/datasets/uploads/{started['id']}"
    assert client_as("bob").put(f"{base}/parts/1", data=b"x").status_code == 404  # another user's upload
    assert client.put(f"{base}/parts/0", data=b"x").status_code == 422
    for number, piece in enumerate(pieces, start=1):
        client.put(f"{base}/parts/{number}", data=piece, content_type="application/octet-stream")
    done = client.post(f"{base}/complete")
    assert done.status_code == 201, done.json
    assert done.json["rows"] == 200 and done.json["sha256"] == upload(client, "whole", whole).json["sha256"]
    assert not (app.extensions["trainq"].storage / "uploads" / started["id"]).exists()
    assert client.post(f"{base}/complete").status_code == 404  # done once
    abandoned = client.post("/api/v1/datasets/uploads", query_string={"name": "gone"}).json
    client.put(f"/api/v1/datasets/uploads/{abandoned['id']}/parts/1", data=b"a,b\n")
    assert client.delete(f"/api/v1/datasets/uploads/{abandoned['id']}").status_code == 204
    assert not (app.extensions["trainq"].storage / "uploads" / abandoned["id"]).exists()


def zip_of(files: dict[str, bytes]) -> bytes:
    import zipfile

    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return out.getvalue()


def png() -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (12, 10), (200, 10, 10)).save(out, "PNG")
    return out.getvalue()


def test_an_archive_of_class_folders_is_profiled_and_its_samples_served(client):
    files = {f"pets/{c}/{i}.png": png() for c in ("cat", "dog") for i in range(5)}
    answer = upload(client, "pets", zip_of(files))
    assert answer.status_code == 201, answer.json
    d = answer.json
    assert (d["kind"], d["source"], d["class_names"], d["rows"]) == ("images", "zip", ["cat", "dog"], 10)
    assert d["profile"]["samples"] == {"cat": [f"pets/cat/{i}.png" for i in range(4)],
                                       "dog": [f"pets/dog/{i}.png" for i in range(4)]}
    sample = client.get("/api/v1/datasets/pets/samples/5")
    assert sample.status_code == 200 and sample.mimetype == "image/png"
    assert client.get("/api/v1/datasets/pets/samples/8").status_code == 404
    planned = client.post("/api/v1/jobs:validate", json={**spec_for("pets", 2, image_size=[8, 10]), "model": {
        "layers": [{"type": "conv2d", "out_channels": 4}, {"type": "flatten"}, {"type": "dense", "units": 2}]}})
    assert planned.status_code == 200, planned.json
    assert planned.json["plan"]["input_shape"] == [3, 8, 10]


@pytest.mark.parametrize("files, fragment", [
    ({"cat/1.png": b"x", "../../escape.png": b"x"}, "climbs out"),
    ({"cat/1.png": b"x", "/etc/cron.d/evil": b"x"}, "absolute path"),
    ({"cat/big.png": bytes(3 * 2**20)}, "zip bomb"),
])
def test_a_hostile_archive_is_refused_and_writes_nothing(client, app, tmp_path, files, fragment):
    import zipfile

    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in files.items():
            z.writestr(name, data)
    answer = upload(client, "hostile", out.getvalue())
    assert answer.status_code == 422 and fragment in answer.json["message"], answer.json
    assert stored_files(app) == [] and not (tmp_path / "escape.png").exists()
    assert not (tmp_path.parent / "escape.png").exists()
