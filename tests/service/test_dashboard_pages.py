"""What the dashboard's pages and the list behind them show a user: the runs list without a sweep's trials unless
asked, each job's best value of the metric it is judged by, the favicon."""

from __future__ import annotations

from tests.service.test_api import attempt_headers, claim, submit
from tests.service.test_sweeps import sweep
from tests.specs import mlp, with_


def report(client, worker_headers, job_id, points):
    c = claim(client, job_id, worker_headers).json
    answer = client.post(f"/api/v1/worker/attempts/{c['attempt_id']}/metrics", json={"points": points},
                         headers=attempt_headers(worker_headers, c))
    assert answer.status_code == 200


def test_the_best_column_is_the_monitored_metric_in_its_own_direction(client, worker_headers):
    by_loss = submit(client, with_(mlp(), name="by-loss"))["id"]
    by_accuracy = submit(client, with_(mlp(), **{"name": "by-accuracy",
                                                  "training.early_stopping": {"monitor": "val_accuracy"}}))["id"]
    for job_id in (by_loss, by_accuracy):
        report(client, worker_headers, job_id, [
            ["val_loss", 1, 1, 0.9], ["val_loss", 2, 2, 0.4], ["val_loss", 3, 3, 0.6],
            ["val_accuracy", 1, 1, 0.7], ["val_accuracy", 2, 2, 0.95], ["val_accuracy", 3, 3, 0.9]])
    best = {j["name"]: j["best_metric"] for j in client.get("/api/v1/jobs").json["jobs"]}
    assert best["by-loss"] == {"name": "val_loss", "value": 0.4, "mode": "min"}
    assert best["by-accuracy"] == {"name": "val_accuracy", "value": 0.95, "mode": "max"}
    page = client.get("/").get_data(as_text=True)
    assert "best (monitored)" in page and "val_accuracy 0.9500" in page and "val_loss 0.4000" in page


def test_the_runs_page_lists_a_sweeps_trials_only_when_asked(client):
    alone = submit(client, with_(mlp(), name="on-its-own"))["id"]
    made = client.post("/api/v1/sweeps", json=sweep(parallel=2)).get_json()
    trials = [t["job_id"] for t in made["trials"]]
    assert len(trials) == 2

    page = client.get("/").get_data(as_text=True)
    assert alone in page and not any(t in page for t in trials)
    assert "2 trials of 1 sweep not listed here" in page and 'href="/sweeps"' in page
    shown = client.get("/?sweep=any").get_data(as_text=True)
    assert all(t in shown for t in trials) and f"trial of sweep {made['id'][:6]}" in shown

    listed = lambda query: {j["id"] for j in client.get(f"/api/v1/jobs?{query}").json["jobs"]}  # noqa: E731
    assert listed("") == {alone, *trials}  # the API lists everything unless asked
    assert listed("sweep=none") == {alone}
    assert listed(f"sweep={made['id']}") == set(trials)
    bad = client.get("/api/v1/jobs?sweep=some")
    assert bad.status_code == 400 and bad.json["errors"] == [
        {"path": "sweep", "message": "none, any, or a sweep's id (32 hex digits)"}]
    assert client.get(f"/api/v1/jobs/{trials[0]}").json["sweep_id"] == made["id"]


def test_the_favicon_is_served_to_anyone(anon):
    answer = anon.get("/favicon.ico")
    assert answer.status_code == 200 and answer.mimetype == "image/svg+xml" and b"<svg" in answer.data
    assert 'rel="icon"' in anon.get("/login").get_data(as_text=True)


def test_the_run_page_spec_table_leaves_out_what_does_not_apply(client):
    job = submit(client, mlp())["id"]  # digits, relu layers
    page = client.get(f"/jobs/{job}").get_data(as_text=True)
    table = page[page.index('id="spec-table"'):]
    assert "dataset.val_fraction" in table and "model.layers[1].fn" in table
    for inapplicable in ("dataset.classes", "dataset.features", "dataset.image_size", "model.layers[1].alpha",
                         "model.layers[1].slope"):
        assert inapplicable not in table, inapplicable


def test_the_runs_page_adds_columns_for_a_final_metric_and_chosen_hyperparameters(client, worker_headers):
    done = submit(client, with_(mlp(), **{"name": "with-columns", "optimizer.lr": 0.003}))["id"]
    c = claim(client, done, worker_headers).json
    finish = {"status": "succeeded", "stop_reason": "completed", "epoch": 5, "metrics": {"test_accuracy": 0.9125}}
    assert client.post(f"/api/v1/worker/attempts/{c['attempt_id']}/finish", json=finish,
                       headers=attempt_headers(worker_headers, c)).status_code == 200
    page = client.get("/?cols=test_accuracy,optimizer.lr,model.layers[0].units,no.such").get_data(as_text=True)
    head = page[page.index("<thead>"):page.index("</thead>")]
    for column in ("test_accuracy", "optimizer.lr", "model.layers[0].units"):
        assert f'<th class="extra">{column}</th>' in head
    row = page[page.index(f'<tr data-id="{done}">'):]
    row = row[:row.index("</tr>")]
    cells = [part.split("</td>")[0] for part in row.split('<td class="extra">')[1:]]
    assert cells == ["0.9125", "0.0030", "64", ""]  # an unknown column is empty, not an error


def test_a_browser_gets_a_page_for_a_missing_run_and_a_client_the_apis_json(client):
    """A mistyped or stale dashboard link answered the API's JSON in the browser; it is a page with a way back now,
    while the API (and anything not asking for HTML first) keeps its JSON."""
    browser = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}
    missing = "0" * 32
    page = client.get(f"/jobs/{missing}", headers=browser)
    assert page.status_code == 404 and page.mimetype == "text/html"
    text = page.get_data(as_text=True)
    assert "404 · Not Found" in text and f"no job {missing}" in text and 'href="/"' in text
    assert client.get("/no/such/page", headers=browser).status_code == 404
    assert "404 · Not Found" in client.get("/no/such/page", headers=browser).get_data(as_text=True)
    api = client.get(f"/api/v1/jobs/{missing}", headers=browser)
    assert api.status_code == 404 and api.json["error"] == "not_found"
    assert client.get(f"/jobs/{missing}", headers={"Accept": "*/*"}).json["error"] == "not_found"
