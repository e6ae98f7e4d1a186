"""A team's own data on real processes: a table of strings, an identifier and missing values trains on a worker, and
its model predicts from the same raw records through /predict, the Open Inference Protocol (tritonclient) and its
ONNX file alone, identically; a zip of class folders of images trains a CNN that names a PNG's class; a job pinned to
a version reproduces its metrics after a newer version is uploaded."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image, ImageDraw

from tests.integration.test_models import wait_ready

pytestmark = pytest.mark.integration


def churn_csv(n: int = 900, seed: int = 0) -> bytes:
    """Churn depends on the plan (a string), tenure (missing now and then) and the monthly charge; the id is all
    distinct, the region is noise."""
    rng = np.random.default_rng(seed)
    lines = ["customer_id,plan,region,tenure,monthly,churned"]
    for i in range(n):
        plan = rng.choice(["free", "basic", "pro"])
        tenure = int(rng.integers(0, 60))
        monthly = float(rng.normal(50, 15))
        risk = {"free": 1.5, "basic": 0.0, "pro": -1.5}[plan] - tenure / 15 + (monthly - 50) / 10
        churned = "yes" if risk + rng.normal(0, 0.3) > 0 else "no"
        shown_plan = "" if rng.random() < 0.05 else plan
        shown_tenure = "" if rng.random() < 0.1 else str(tenure)
        lines.append(f"C{i:05d},{shown_plan},{rng.choice(['north', 'south', 'east'])},{shown_tenure},"
                     f"{monthly:.2f},{churned}")
    return ("\n".join(lines) + "\n").encode()


CHURN_SPEC = {
    "name": "churn", "register_as": "churn",
    "dataset": {"name": "upload", "upload": "churn", "seed": 0, "missing": {"strategy": "median", "indicator": True},
                "columns": {"region": {"type": "category", "encoding": "embedding", "dim": 2}}},
    "model": {"layers": [{"type": "dense", "units": 32}, {"type": "activation", "fn": "relu"},
                         {"type": "dense", "units": 2}]},
    "loss": {"type": "cross_entropy"}, "optimizer": {"type": "adam", "lr": 0.01},
    "training": {"epochs": 12, "batch_size": 64, "seed": 0},
}

RECORDS = [
    {"customer_id": "X1", "plan": "free", "region": "north", "tenure": 2, "monthly": 80.0},
    {"monthly": 20.5, "tenure": 50, "plan": "pro", "region": "east"},  # keys in another order, no id
    {"plan": None, "region": "south", "tenure": None, "monthly": 50.0, "churned": "no"},  # nulls, the target sent
    {"plan": "enterprise", "region": "mars", "monthly": 55.0},  # unseen categories; tenure missing
]


def upload(stack, name: str, data: bytes, **params):
    answer = stack.http.post(f"{stack.url}/api/v1/datasets", params={"name": name, **params}, data=data,
                             headers={"Content-Type": "application/octet-stream"}, timeout=60)
    assert answer.status_code in (200, 201), answer.text
    return answer.json()


@pytest.fixture(scope="module")
def churn(stack):
    first = upload(stack, "churn", churn_csv(), target="churned")
    job = stack.wait(stack.submit(CHURN_SPEC), timeout=180)
    assert job["status"] == "succeeded", stack.logs()
    version = wait_ready(stack, "churn/versions/1")
    assert version["state"] == "ready", version
    return first, job, version


def test_a_table_of_strings_and_missing_values_trains_and_predicts_from_raw_records(stack, churn):
    first, job, version = churn
    assert job["metrics"]["test_accuracy"] > 0.9, job["metrics"]  # the majority class alone is 0.81
    assert job["spec"]["dataset"]["upload"] == "churn@1"
    assert stack.get(f"/api/v1/jobs/{job['id']}")["dataset"]["sha256"] == first["sha256"]
    assert [i["name"] for i in version["inputs"]] == ["plan", "region", "tenure", "monthly"]
    assert {i["name"]: i["datatype"] for i in version["inputs"]}["plan"] == "BYTES"

    answer = stack.http.post(f"{stack.url}/api/v1/models/churn/predict", json={"records": RECORDS}, timeout=10)
    assert answer.status_code == 200, answer.text
    predictions = answer.json()["predictions"]
    assert predictions[0]["label"] == "yes" and predictions[1]["label"] == "no"  # free, new, dear; pro, loyal, cheap
    by_predict = np.array([[p["probabilities"]["no"], p["probabilities"]["yes"]] for p in predictions])

    # the Open Inference Protocol, with its standard client: one input per column, BYTES for categories
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url=stack.url.removeprefix("http://"))
    auth = {"Authorization": stack.http.headers["Authorization"]}
    columns = {"plan": ["free", "pro", "", "enterprise"], "region": ["north", "east", "south", "mars"],
               "tenure": [2, 50, np.nan, np.nan], "monthly": [80.0, 20.5, 50.0, 55.0]}
    inputs = []
    for name, values in columns.items():
        if isinstance(values[0], str):
            tensor = httpclient.InferInput(name, [4, 1], "BYTES")
            tensor.set_data_from_numpy(np.array(values, dtype=object).reshape(4, 1))
        else:
            tensor = httpclient.InferInput(name, [4, 1], "FP32")
            tensor.set_data_from_numpy(np.array(values, dtype=np.float32).reshape(4, 1))
        inputs.append(tensor)
    result = client.infer("churn", inputs, headers=auth)
    np.testing.assert_allclose(result.as_numpy("probabilities"), by_predict, atol=1e-6)

    # the ONNX file alone, given the raw columns: no trainq, no torch
    blob = stack.http.get(f"{stack.url}/api/v1/models/churn/versions/1/onnx", timeout=10).content
    session = ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
    feeds = {name: (np.array(values, dtype=object) if isinstance(values[0], str)
                    else np.array(values, dtype=np.float32)).reshape(-1, 1) for name, values in columns.items()}
    label, probabilities = session.run(["label", "probabilities"], feeds)
    np.testing.assert_allclose(probabilities, by_predict, atol=1e-6)
    assert [version["class_names"][i] for i in label] == [p["label"] for p in predictions]

    # the command line reads a CSV as the table had it: text, empty cells and NaN (missing) included
    import csv
    import subprocess
    import sys

    from tests.integration.stack import ADMIN_TOKEN

    rows = stack.folder / "rows.csv"
    rows.write_text("customer_id,plan,region,tenure,monthly\nX1,free,north,2,80\nX2,pro,east,50,20.5\n"
                    "X3,,south,NaN,50\nX4,enterprise,mars,,55\n")
    out = stack.folder / "answers.csv"
    done = subprocess.run([sys.executable, "-m", "trainq.cli", "predict", "churn", str(rows), "--out", str(out)],
                          env={**stack.env, "TRAINQ_TOKEN": ADMIN_TOKEN}, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    answered = list(csv.DictReader(out.open()))
    assert [r["label"] for r in answered] == [p["label"] for p in predictions]
    assert [float(r["p_yes"]) for r in answered] == pytest.approx(list(by_predict[:, 1]), abs=1e-6)


def test_a_record_that_does_not_fit_names_the_field(stack, churn):
    body = {"records": [{"plan": "pro", "monthly": "cheap"}, {"plan": ["a"], "tenur": 3}]}
    answer = stack.http.post(f"{stack.url}/api/v1/models/churn/predict", json=body, timeout=10)
    assert answer.status_code == 422
    errors = {e["path"]: e["message"] for e in answer.json()["errors"]}
    assert "a string where a number goes" in errors["records[0].monthly"]
    assert "did you mean 'tenure'?" in errors["records[1].tenur"]
    assert "records[1].plan" in errors


def test_batch_scoring_a_table_keeps_its_columns_and_names_bad_rows(stack, churn):
    from tests.integration.test_models import wait_batch

    lines = ["customer_id,plan,region,tenure,monthly", "A,free,north,2,80", "B,pro,east,oops,20",
             "C,basic,south", "D,,west,,50"]
    batch = stack.http.post(f"{stack.url}/api/v1/models/churn/batch", data="\n".join(lines).encode(),
                            headers={"Content-Type": "text/csv"}, timeout=10)
    done = wait_batch(stack, batch.headers["Location"])
    assert (done["status"], done["rows"], done["bad_rows"]) == ("succeeded", 4, 2), done
    assert done["problems"] == [{"row": 3, "message": "tenure: 'oops' is not a number"},
                                {"row": 4, "message": "the row has the wrong number of fields"}]
    import csv

    scored = list(csv.DictReader(io.StringIO(stack.http.get(stack.url + done["output_url"], timeout=10).text)))
    assert list(scored[0])[:6] == ["row", "customer_id", "plan", "region", "tenure", "monthly"]
    assert [(r["row"], r["customer_id"]) for r in scored] == [("2", "A"), ("5", "D")]
    single = stack.http.post(f"{stack.url}/api/v1/models/churn/predict", timeout=10,
                             json={"records": [{"plan": None, "region": "west", "tenure": None, "monthly": 50}]})
    assert float(scored[1]["p_yes"]) == pytest.approx(single.json()["predictions"][0]["probabilities"]["yes"],
                                                      abs=1e-5)


def test_a_pinned_version_reproduces_its_metrics_after_a_new_upload(stack, churn):
    first, job, _ = churn
    newer = upload(stack, "churn", churn_csv(seed=1), target="churned")
    assert newer["version"] == 2
    again = stack.wait(stack.submit({**CHURN_SPEC, "register_as": None,
                                     "dataset": {**CHURN_SPEC["dataset"], "upload": "churn@1"}}), timeout=180)
    assert again["status"] == "succeeded", stack.logs()
    assert again["metrics"]["test_accuracy"] == job["metrics"]["test_accuracy"]
    assert again["metrics"]["test_loss"] == job["metrics"]["test_loss"]
    latest = stack.http.post(f"{stack.url}/api/v1/jobs:validate", json={**CHURN_SPEC, "register_as": None},
                             timeout=10)
    assert latest.status_code == 200
    used = stack.get("/api/v1/datasets/churn@1")["used_by"]
    assert {j["id"] for j in used["jobs"]} >= {job["id"], again["id"]}
    assert used["models"] == [{"model": "churn", "version": 1}]
    refused = stack.http.delete(f"{stack.url}/api/v1/datasets/churn@1", timeout=10)
    assert refused.status_code == 409 and "model churn version 1" in refused.json()["message"]


SHAPES = ("circle", "square", "triangle")


def picture(kind: str, rng: np.random.Generator, size: int = 40) -> bytes:
    """A colour PNG of one shape at a random place and size, on a noisy background."""
    background = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
    image = Image.fromarray(background)
    draw = ImageDraw.Draw(image)
    r = int(rng.integers(9, 15))
    cx, cy = (int(v) for v in rng.integers(r + 1, size - r - 1, 2))
    colour = tuple(int(v) for v in rng.integers(150, 256, 3))
    if kind == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    elif kind == "square":
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=colour)
    else:
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def test_a_zip_of_image_folders_trains_a_cnn_that_names_a_pngs_class(stack):
    rng = np.random.default_rng(0)
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        for kind in SHAPES:
            for i in range(120):
                z.writestr(f"shapes/{kind}/{i:03d}.png", picture(kind, rng))
        z.writestr("shapes/readme.txt", "not an image")
    d = upload(stack, "pictures", archive.getvalue())
    assert (d["kind"], d["classes"], d["class_names"]) == ("images", 3, sorted(SHAPES))
    assert d["profile"]["sizes"] == {"40x40": 360} and d["profile"]["unreadable"][0]["file"] == "shapes/readme.txt"
    sample = stack.http.get(f"{stack.url}/api/v1/datasets/pictures/samples/0", timeout=10)
    assert sample.headers["Content-Type"] == "image/png" and Image.open(io.BytesIO(sample.content)).size == (40, 40)
    spec = {"name": "pictures", "register_as": "pictures",
            "dataset": {"name": "upload", "upload": "pictures", "image_size": 24, "seed": 0},
            "model": {"layers": [{"type": "conv2d", "out_channels": 16, "kernel": 3, "padding": "same"},
                                 {"type": "activation", "fn": "relu"}, {"type": "pool", "size": 2},
                                 {"type": "conv2d", "out_channels": 32, "kernel": 3, "padding": "same"},
                                 {"type": "activation", "fn": "relu"}, {"type": "pool", "size": 2},
                                 {"type": "flatten"}, {"type": "dense", "units": 3}]},
            "loss": {"type": "cross_entropy"}, "optimizer": {"type": "adam", "lr": 0.003},
            "training": {"epochs": 15, "batch_size": 32, "seed": 0}}
    planned = stack.http.post(f"{stack.url}/api/v1/jobs:validate", json=spec, timeout=10).json()
    assert planned["plan"]["input_shape"] == [3, 24, 24]
    job = stack.wait(stack.submit(spec), timeout=240)
    assert job["status"] == "succeeded", stack.logs()
    assert job["metrics"]["test_accuracy"] >= 0.9, job["metrics"]
    events = [e["message"] for e in stack.get(f"/api/v1/jobs/{job['id']}/events")["events"]]
    assert any("preparing 360 images at 24x24" in m for m in events), events
    version = wait_ready(stack, "pictures/versions/1")
    assert version["state"] == "ready", version
    fresh = np.random.default_rng(7)
    right = 0
    for kind in SHAPES * 3:
        answer = stack.http.post(f"{stack.url}/api/v1/models/pictures/predict", data=picture(kind, fresh),
                                 headers={"Content-Type": "image/png"}, timeout=10)
        assert answer.status_code == 200, answer.text
        right += answer.json()["predictions"][0]["label"] == kind
    assert right >= 8
    files = [("a", ("c.png", picture("circle", fresh), "image/png")),
             ("b", ("s.png", picture("square", fresh), "image/png"))]
    several = stack.http.post(f"{stack.url}/api/v1/models/pictures/predict", files=files, timeout=10).json()
    assert len(several["predictions"]) == 2 and set(several["predictions"][0]["probabilities"]) == set(SHAPES)
    picture_file = stack.folder / "circle.png"
    picture_file.write_bytes(picture("circle", fresh))
    import subprocess
    import sys

    from tests.integration.stack import ADMIN_TOKEN

    done = subprocess.run([sys.executable, "-m", "trainq.cli", "predict", "pictures", str(picture_file)],
                          env={**stack.env, "TRAINQ_TOKEN": ADMIN_TOKEN}, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.split()[0] in SHAPES, done.stderr
    broken = stack.http.post(f"{stack.url}/api/v1/models/pictures/predict", data=b"\x89PNG broken",
                             headers={"Content-Type": "image/png"}, timeout=10)
    assert broken.status_code == 422 and "(body)" in json.dumps(broken.json()["errors"])
