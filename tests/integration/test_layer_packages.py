"""A layer type from a package an operator installs: a real wheel, pip-installed into a folder that is on the path of
some processes only. The service plans it, a worker with it trains it, a worker without it leaves the job queued and
the job says which package is missing; built-ins cannot be shadowed."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import redis

from tests.integration.stack import Stack
from tests.plugins.check_gated import SPEC
from tests.plugins.gated_package import NAME, VERSION, install
from trainq.models.spec import SpecError, parse_spec

pytestmark = pytest.mark.integration

PACKAGE = {"gated": {"package": NAME, "version": VERSION}}


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    return str(install(tmp_path_factory.mktemp("gated")))


def test_a_process_without_the_package_names_the_type_unknown_and_says_who_installs_it():
    with pytest.raises(SpecError) as caught:
        parse_spec(SPEC)
    errors = caught.value.errors
    assert [e.path for e in errors] == ["model.layers[1]", "model.layers[3]"]  # each use of it
    error = errors[0]
    assert "'gated'" in error.message
    assert "GET /api/v1/layers" in error.message and "lstm" in error.message


def test_a_package_layer_plans_trains_resumes_and_exports_like_a_built_in(site):
    done = subprocess.run([sys.executable, "-m", "tests.plugins.check_gated"], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": site}, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    # its shape rule and parameter count, run by the planner, are what torch builds: 2 x (32 x 32 + 32), 2 x (32 x 10
    # + 10)
    assert result["planned"] == [["dense", [32], 64 * 32 + 32], ["gated", [32], 2112], ["add", [32], 64 * 32 + 32],
                                 ["gated", [10], 660]]
    assert result["gated_modules"] == [2112, 660] and result["params"] == result["torch_params"]
    assert result["metrics"]["test_accuracy"] > 0.9  # digits: it learns
    assert result["resumed_equal"] and result["onnx_difference"] < 1e-4
    assert "'dense' is a built-in layer type; a plugin cannot replace it" in done.stderr


@pytest.fixture()
def stack(make_database, redis_url, tmp_path, site):
    redis.Redis.from_url(redis_url).flushdb()
    s = Stack(tmp_path, TRAINQ_DATABASE_URL=make_database(), TRAINQ_BROKER_URL=redis_url)
    try:
        yield s.serve(env={"PYTHONPATH": site})
    finally:
        s.close()


def test_only_a_worker_with_the_package_takes_the_job(stack, site):
    catalog = stack.get("/api/v1/layers")
    gated = next(layer for layer in catalog["layers"] if layer["type"] == "gated")
    assert (gated["package"], gated["version"], gated["required"]) == (NAME, VERSION, ["units"])
    assert gated["fields"]["units"]["type"] == "integer" and "gated linear unit" in gated["description"]
    assert {(r["name"], r["package"]) for r in catalog["refused"]} == {("dense", NAME)}
    dense = next(layer for layer in catalog["layers"] if layer["type"] == "dense")
    assert dense["package"] is None  # the built-in stays

    wrong = {**SPEC, "model": {"layers": [{"type": "gated", "units": 4, "from": "in"}, {"type": "flatten"},
                                          {"type": "dense", "units": 10}]},
             "dataset": {"name": "shapes", "seed": 0}}
    answer = stack.http.post(f"{stack.url}/api/v1/jobs:validate", json=wrong, timeout=10)
    assert answer.status_code == 422, answer.text
    assert [(e["path"], e["message"]) for e in answer.json()["errors"]][:1] == [
        ("model.layers[0]", "gated needs a vector of features, got [1, 16, 16]: add a flatten layer before it")]

    stack.worker("plain")  # no package on its path
    job_id = stack.submit(SPEC)
    stack.wait_for_log("plain", "not claimed")  # it is handed the job and leaves it; the reconciler sends it again
    job = stack.job(job_id)
    assert (job["status"], job["attempts"], job["plugins"]) == ("queued", 0, PACKAGE)
    assert f"no worker of pool cpu has the layer type gated from {NAME} {VERSION}" in job["waiting_reason"]
    assert f"pip install {NAME}=={VERSION}" in job["waiting_reason"]

    stack.worker("equipped", env={"PYTHONPATH": site})
    job = stack.wait(job_id, timeout=180)
    assert (job["status"], job["worker"], job["attempts"]) == ("succeeded", "equipped@test", 1), stack.logs()
    assert job["metrics"]["test_accuracy"] > 0.9
    workers = {w["name"]: w for w in stack.get("/api/v1/workers")["workers"]}
    assert workers["equipped@test"]["layers"] == PACKAGE and workers["plain@test"]["layers"] == {}
