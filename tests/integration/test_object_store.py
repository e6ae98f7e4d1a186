"""Two service instances on one PostgreSQL, one Redis and one S3 bucket (moto's server mode: a real S3 endpoint on
127.0.0.1): what one instance records, the other serves, and a worker of either resumes from it. Workers PUT and GET
checkpoints and datasets straight from the store through presigned URLs; a cut-off upload is never recorded; a store
that stops answering for a while costs the job nothing."""

from __future__ import annotations

import hashlib
import io
import signal
import subprocess
import sys
import time

import pytest
import requests

from tests.integration.stack import Stack, free_port, wait_until
from tests.specs import mlp, with_
from trainq.models.checkpoint import read_meta

pytestmark = pytest.mark.integration

EPOCHS = 120
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "trainq-test", "AWS_SECRET_ACCESS_KEY": "trainq-test-secret",
               "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture()
def s3(tmp_path):
    """moto's S3 server on a free port of 127.0.0.1 with an empty bucket `trainq`."""
    import boto3

    port = free_port()
    log = open(tmp_path / "moto.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _answers(endpoint), timeout=30, what="moto's S3 server")
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                              aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
                              aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"])
        client.create_bucket(Bucket="trainq")
        yield endpoint, client, proc
    finally:
        proc.send_signal(signal.SIGCONT)
        proc.terminate()
        proc.wait(timeout=10)


def _answers(url: str) -> bool:
    try:
        requests.get(url, timeout=1)
        return True
    except requests.RequestException:
        return False


@pytest.fixture()
def two_instances(s3, make_database, redis_url, tmp_path):
    import redis

    redis.Redis.from_url(redis_url).flushdb()
    endpoint, client, proc = s3
    env = {"TRAINQ_DATABASE_URL": make_database(), "TRAINQ_BROKER_URL": redis_url,
           "TRAINQ_STORAGE_URL": "s3://trainq/runs", "TRAINQ_S3_ENDPOINT_URL": endpoint,
           "TRAINQ_LEASE_SECONDS": "3", **CREDENTIALS}
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a, b = Stack(tmp_path / "a", **env), Stack(tmp_path / "b", **env)
    try:
        a.serve()
        b.serve()
        yield a, b, client, proc
    finally:
        a.close()
        b.close()


def keys(client, prefix: str) -> list[str]:
    return [o["Key"] for o in client.list_objects_v2(Bucket="trainq", Prefix=prefix).get("Contents", [])]


def test_what_one_instance_records_the_other_serves_and_a_worker_of_either_resumes(two_instances):
    a, b, client, moto = two_instances
    # A dataset uploaded through B, trained through A: the worker reads it from the bucket.
    rows = "\n".join(["x1,x2,label"] + [f"{i % 7},{(i * 3) % 11},{'yes' if i % 7 > 3 else 'no'}" for i in range(600)])
    uploaded = b.http.post(f"{b.url}/api/v1/datasets?name=pairs&target=label", data=rows.encode(), timeout=30)
    assert uploaded.status_code == 201, uploaded.text
    assert keys(client, "runs/datasets/") == [f"runs/datasets/{uploaded.json()['id']}.csv"]  # kept as it came
    spec = with_(mlp(hidden=(256, 256), outputs=2, epochs=EPOCHS, batch_size=8, checkpoint_every_seconds=0.5),
                 dataset={"name": "upload", "upload": "pairs"})
    a.worker("first")
    job_id = a.submit(spec)
    a.wait(job_id, until=lambda j: j["epoch"] >= 4, timeout=120)
    wait_until(lambda: a.get(f"/api/v1/jobs/{job_id}/checkpoints")["checkpoints"], what="a recorded checkpoint")
    a.stop("first", signal.SIGKILL)  # no chance to say anything: its lease runs out
    recorded = a.get(f"/api/v1/jobs/{job_id}/checkpoints")["checkpoints"]
    # every checkpoint lives in the bucket (none on either instance's disk), with the sha256 SQL recorded
    assert all(f"runs/checkpoints/{job_id}/{c['id']}.safetensors" in keys(client, f"runs/checkpoints/{job_id}/")
               for c in recorded)
    assert not (a.folder / "data" / "storage" / "checkpoints").exists()
    downloaded = b.http.get(f"{b.url}/api/v1/jobs/{job_id}/checkpoints/{recorded[0]['id']}/download", timeout=30)
    assert downloaded.status_code == 200 and hashlib.sha256(downloaded.content).hexdigest() == recorded[0]["sha256"]
    assert read_meta(downloaded.content)["spec"]["name"] == spec["name"]

    # A worker of the other instance takes the job over from the checkpoint A recorded; the store stops answering
    # for a few seconds meanwhile (SIGSTOP): uploads wait and retry, the job does not fail.
    b.worker("second")
    b.wait(job_id, until=lambda j: j["attempts"] == 2 and j["status"] == "running", timeout=60)
    time.sleep(1.0)
    moto.send_signal(signal.SIGSTOP)
    time.sleep(3.0)
    assert b.job(job_id)["status"] == "running"  # the outage was mid-run
    moto.send_signal(signal.SIGCONT)
    job = b.wait(job_id, timeout=180)
    assert job["status"] == "succeeded", b.logs() + a.logs()
    assert job["worker"] == "second@test"
    events = [e["message"] for e in b.get(f"/api/v1/jobs/{job_id}/events")["events"]]
    assert any("resuming after epoch" in m or "at batch" in m for m in events), events
    series = b.get(f"/api/v1/jobs/{job_id}/metrics")["series"]
    assert series["val_loss"]["epoch"] == list(range(1, EPOCHS + 1))  # every epoch once, across the two workers
    latest = [c for c in b.get(f"/api/v1/jobs/{job_id}/checkpoints")["checkpoints"] if c["is_latest"]]
    assert latest and latest[0]["epoch"] == EPOCHS

    # Registered through A, exported by a worker into the bucket, answered by B from it.
    from tests.integration.test_models import wait_ready

    registered = a.http.post(f"{a.url}/api/v1/models", json={"name": "pairs", "job_id": job_id}, timeout=10)
    assert registered.status_code == 201, registered.text
    version = wait_ready(b, "pairs/versions/1")
    assert version["state"] == "ready", version
    assert {k.rsplit("/", 1)[-1] for k in keys(client, "runs/models/")} >= {"model.onnx", "bundle.json"}
    answer = b.http.post(f"{b.url}/api/v1/models/pairs/predict", json={"records": [{"x1": 6, "x2": 1}]}, timeout=30)
    assert answer.status_code == 200 and answer.json()["predictions"][0]["label"] in ("yes", "no"), answer.text
    onnx = a.http.get(f"{a.url}/api/v1/models/pairs/versions/1/onnx", timeout=30)
    assert onnx.status_code == 200 and hashlib.sha256(onnx.content).hexdigest() == version["onnx_sha256"]
    # the export worker PUT the bundle into its claim's staging place; the fenced finish moved it into the bundle
    assert keys(client, "runs/staging/") == []

    # A batch scored through B (the worker GETs model and dataset and PUTs its output in the store), read through A.
    from tests.integration.test_models import wait_batch

    batch = b.http.post(f"{b.url}/api/v1/models/pairs/batch", json={"dataset": "pairs"}, timeout=10)
    assert batch.status_code == 202, batch.text
    done = wait_batch(a, batch.headers["Location"].replace(b.url, ""))
    assert done["status"] == "succeeded" and done["done"] == 600, done
    output = a.http.get(a.url + done["output_url"], timeout=30).text.splitlines()
    assert len(output) == 601 and output[0].startswith("row,")
    assert keys(client, "runs/staging/") == [] and keys(client, f"runs/batches/{done['id']}/") == [
        f"runs/batches/{done['id']}/output.csv"]


def test_a_checkpoint_cut_off_or_changed_on_its_way_is_never_recorded(two_instances):
    a, b, client, _ = two_instances
    from tests.service.test_api import _checkpoint_blob

    blob = _checkpoint_blob(epochs=1)[0]  # before the claim: its lease is 3 s and nothing here heartbeats
    digest = hashlib.sha256(blob).hexdigest()
    job_id = a.submit(with_(mlp(epochs=2), resources={"pool": "nobody"}))  # no worker: claimed by hand here
    worker = requests.Session()
    worker.headers["Authorization"] = "Bearer integration-token"
    c = worker.post(f"{a.url}/api/v1/worker/jobs/{job_id}/claim", json={"worker": "hand@test"}, timeout=10).json()
    base = f"/api/v1/worker/attempts/{c['attempt_id']}/checkpoints"
    headers = {"X-Trainq-Attempt-Token": c["token"]}
    assert c["direct_checkpoints"] is True
    for body in (blob[: len(blob) // 2], blob[:-1] + bytes([blob[-1] ^ 1])):  # cut off; one bit changed
        answer = worker.post(f"{a.url}{base}/presign", headers=headers, timeout=10)
        assert answer.status_code == 201, answer.text
        target = answer.json()
        assert requests.put(target["url"], data=io.BytesIO(body), timeout=10).status_code == 200
        refused = worker.post(f"{b.url}{base}/record", headers=headers, timeout=10,
                              json={"id": target["id"], "size": len(blob), "sha256": digest})
        assert refused.status_code == 422 and "upload it again" in refused.json()["message"], refused.text
        assert f"runs/checkpoints/{job_id}/{target['id']}.safetensors" not in keys(client, "runs/checkpoints/")
    never_sent = worker.post(f"{a.url}{base}/presign", headers=headers, timeout=10).json()
    missing = worker.post(f"{b.url}{base}/record", headers=headers, timeout=10,
                          json={"id": never_sent["id"], "size": len(blob), "sha256": digest})
    assert missing.status_code == 422
    assert a.get(f"/api/v1/jobs/{job_id}/checkpoints")["checkpoints"] == []
    target = worker.post(f"{a.url}{base}/presign", headers=headers, timeout=10).json()
    assert requests.put(target["url"], data=blob, timeout=10).status_code == 200
    recorded = worker.post(f"{b.url}{base}/record", headers=headers, timeout=10,
                           json={"id": target["id"], "size": len(blob), "sha256": digest, "is_best": True})
    assert recorded.status_code == 201, recorded.text
    [listed] = a.get(f"/api/v1/jobs/{job_id}/checkpoints")["checkpoints"]
    assert listed["id"] == target["id"] and listed["sha256"] == digest and listed["is_best"]


def test_a_large_table_goes_up_in_parts_straight_into_the_bucket(s3, make_database, redis_url, tmp_path):
    """`trainq dataset upload` of a file larger than a request may be: parts PUT by the client to presigned URLs,
    joined in the bucket, profiled by the service a batch at a time, and moved into place; nothing left behind."""
    from tests.integration.stack import ADMIN_TOKEN
    from tests.integration.test_datasets_on_workers import churn_csv

    endpoint, client, _ = s3
    stack = Stack(tmp_path, TRAINQ_DATABASE_URL=make_database(), TRAINQ_BROKER_URL=redis_url,
                  TRAINQ_STORAGE_URL="s3://trainq/runs", TRAINQ_S3_ENDPOINT_URL=endpoint,
                  TRAINQ_MAX_BODY_BYTES=str(6 * 2**20), **CREDENTIALS)
    try:
        stack.serve()
        path = tmp_path / "big.csv"
        path.write_bytes(churn_csv(450_000))
        assert path.stat().st_size > 2 * 6 * 2**20  # three parts at least
        env = {**stack.env, "TRAINQ_SERVICE_URL": stack.url, "TRAINQ_TOKEN": ADMIN_TOKEN}
        done = subprocess.run([sys.executable, "-m", "trainq.cli", "dataset", "upload", str(path), "--name", "big",
                               "--target", "churned"], env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr + stack.logs()
        assert "part 3/3 sent" in done.stderr and "uploaded big@1" in done.stderr
        assert "customer_id       identifier" in done.stdout
        version = stack.get("/api/v1/datasets/big@1")
        assert version["rows"] == 450_000 and version["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert keys(client, "runs/datasets/") == [f"runs/datasets/{version['id']}.csv"]
        assert keys(client, "runs/uploads/") == []
        assert client.list_multipart_uploads(Bucket="trainq").get("Uploads", []) == []

        # data already in a bucket, registered by URL: one object, or a prefix of table shards as one table
        import pyarrow.csv as pcsv
        import pyarrow.parquet as pq

        client.create_bucket(Bucket="lake")
        rows = churn_csv(3000)
        client.put_object(Bucket="lake", Key="churn/all.csv", Body=rows)
        table = pcsv.read_csv(io.BytesIO(rows))
        for i, start in enumerate(range(0, 3000, 1000)):
            out = io.BytesIO()
            pq.write_table(table.slice(start, 1000), out)
            client.put_object(Bucket="lake", Key=f"churn/shards/part-{i}.parquet", Body=out.getvalue())
        one = stack.http.post(f"{stack.url}/api/v1/datasets", timeout=60,
                              json={"name": "lake", "url": "s3://lake/churn/all.csv", "target": "churned"})
        assert one.status_code == 201 and one.json()["rows"] == 3000, one.text
        assert one.json()["sha256"] == hashlib.sha256(rows).hexdigest()
        shards = stack.http.post(f"{stack.url}/api/v1/datasets", timeout=60,
                                 json={"name": "lake", "url": "s3://lake/churn/shards/", "target": "churned"})
        assert shards.status_code == 201 and shards.json()["version"] == 2, shards.text
        assert (shards.json()["source"], shards.json()["rows"]) == ("parquet", 3000)
        assert shards.json()["profile"]["target"] == one.json()["profile"]["target"]
        missing = stack.http.post(f"{stack.url}/api/v1/datasets", json={"name": "x", "url": "s3://lake/nothing/"},
                                  timeout=30)
        assert missing.status_code == 422 and "nothing under" in missing.json()["message"]
        refused = stack.http.post(f"{stack.url}/api/v1/datasets", json={"name": "x", "url": "http://169.254.169.254/"},
                                  timeout=30)
        assert refused.status_code == 422 and refused.json()["errors"][0]["path"] == "url"
    finally:
        stack.close()
