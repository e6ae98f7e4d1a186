"""Who may do what, and inputs that must not hurt: the authorization matrix, CSRF, XSS, paths, limits."""

from __future__ import annotations

import csv
import io

import pytest

from tests.specs import mlp, with_
from tests.service.test_api import attempt_headers, claim, submit

ZERO = "0" * 32

# Every user route, with the job's id filled in. Each is asked by five callers.
ROUTES = [
    ("GET", "/api/v1/jobs/{job}"),
    ("GET", "/api/v1/jobs/{job}/metrics"),
    ("GET", "/api/v1/jobs/{job}/events"),
    ("GET", "/api/v1/jobs/{job}/checkpoints"),
    ("GET", "/api/v1/jobs/{job}/checkpoints/{ckpt}/download"),
    ("POST", "/api/v1/jobs/{job}/cancel"),
    ("DELETE", "/api/v1/jobs/{finished}"),
    ("GET", "/api/v1/datasets/{dataset}"),
    ("DELETE", "/api/v1/datasets/{dataset}"),
]

# expected status per caller: owner is alice, who submitted the jobs
EXPECTED = {"anonymous": 401, "owner": 200, "other": 404, "admin": 200, "worker": 403}


@pytest.fixture()
def owned(client, worker_headers):
    """A running job of alice's with a checkpoint, and a finished one."""
    from tests.service.test_api import _checkpoint_blob

    job = submit(client)
    c = claim(client, job["id"], worker_headers).json
    answer = client.post(f"/api/v1/worker/attempts/{c['attempt_id']}/checkpoints?is_best=1",
                         data=_checkpoint_blob(1)[0], headers=attempt_headers(worker_headers, c))
    finished = submit(client)
    client.post(f"/api/v1/jobs/{finished['id']}/cancel")
    from tests.service.test_datasets import csv_bytes, upload

    dataset = upload(client, "owned", csv_bytes()).json
    return {"job": job["id"], "ckpt": answer.json["id"], "finished": finished["id"], "dataset": dataset["id"]}


@pytest.fixture()
def callers(client_as, worker_headers, app):
    worker = app.test_client()
    worker.token = worker_headers["Authorization"][7:]
    return {"anonymous": client_as(None), "owner": client_as("alice"), "other": client_as("bob"),
            "admin": client_as("admin"), "worker": worker}


@pytest.mark.parametrize("method, route", ROUTES)
@pytest.mark.parametrize("caller", list(EXPECTED))
def test_authorization_matrix(method, route, caller, callers, owned):
    answer = callers[caller].open(route.format(**owned), method=method)
    expected = EXPECTED[caller]
    if expected == 200 and method == "DELETE":
        expected = 204
    assert answer.status_code == expected, (caller, route, answer.json)


@pytest.mark.parametrize("caller, total", [("owner", 2), ("other", 0), ("admin", 2)])
def test_lists_show_only_what_the_caller_may_see(callers, owned, caller, total):
    assert callers[caller].get("/api/v1/jobs").json["total"] == total
    rows = list(csv.reader(io.StringIO(callers[caller].get("/api/v1/jobs.csv").get_data(as_text=True))))
    assert len(rows) == 1 + total


@pytest.mark.parametrize("caller, status", [("anonymous", 401), ("worker", 403), ("owner", 201)])
def test_submitting_needs_a_user(callers, caller, status):
    assert callers[caller].post("/api/v1/jobs", json=mlp()).status_code == status


def test_the_audit_log_records_who_did_what_and_only_admins_read_it(callers, owned):
    callers["owner"].get(f"/api/v1/jobs/{owned['job']}/checkpoints/{owned['ckpt']}/download")
    assert callers["owner"].get("/api/v1/audit").status_code == 403
    entries = callers["admin"].get("/api/v1/audit").json["entries"]
    seen = {(e["user"], e["action"], e["target"]) for e in entries}
    assert ("alice", "submit", f"job:{owned['job']}") in seen
    assert ("alice", "cancel", f"job:{owned['finished']}") in seen
    assert ("alice", "download", f"checkpoint:{owned['ckpt']}") in seen


def test_public_routes_answer_anyone(anon):
    assert anon.get("/api/v1/health").status_code == 200
    assert anon.get("/api/v1/openapi.json").status_code == 200


def test_user_tokens_do_not_open_worker_routes(client, owned):
    assert client.post(f"/api/v1/worker/jobs/{owned['job']}/claim", json={}).status_code == 401


def test_a_revoked_token_stops_working(client_as):
    alice = client_as("alice")
    made = alice.post("/api/v1/tokens", json={"label": "ci"}).json
    fresh = client_as(None)
    fresh.token = made["token"]
    assert fresh.get("/api/v1/me").json["name"] == "alice"
    token_id = next(t["id"] for t in alice.get("/api/v1/tokens").json["tokens"] if t["label"] == "ci")
    assert client_as("bob").delete(f"/api/v1/tokens/{token_id}").status_code == 404  # not bob's
    assert alice.delete(f"/api/v1/tokens/{token_id}").status_code == 204
    assert fresh.get("/api/v1/me").status_code == 401


# ---------------------------------------------------------------------------------------------------------------------
# Sessions, CSRF, sign-in
# ---------------------------------------------------------------------------------------------------------------------


def sign_in(c, name, secret, next_="/"):
    c.get("/login")
    with c.session_transaction() as s:
        csrf = s["csrf"]
    return c.post("/login", data={"username": name, "password": secret, "csrf_token": csrf, "next": next_}), csrf


def test_session_sign_in_with_password_or_token_and_csrf_on_writes(anon, tokens, owned):
    answer, before = sign_in(anon, "alice", "alice-password")
    assert answer.status_code == 302 and answer.headers["Location"] == "/"
    with anon.session_transaction() as s:
        csrf = s["csrf"]
    assert csrf != before  # the session is renewed at sign-in: a planted session cannot be fixed
    assert anon.post(f"/api/v1/jobs/{owned['job']}/cancel", headers={"X-CSRF-Token": before}).status_code == 403
    cookie = answer.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
    assert anon.get(f"/api/v1/jobs/{owned['job']}").status_code == 200
    assert anon.post(f"/api/v1/jobs/{owned['job']}/cancel").status_code == 403  # no CSRF token
    assert anon.post(f"/api/v1/jobs/{owned['job']}/cancel", headers={"X-CSRF-Token": csrf}).status_code == 200

    other = anon.application.test_client()
    answer, _ = sign_in(other, "bob", tokens["bob"])  # a token pasted in place of the password
    assert answer.status_code == 302
    assert other.get(f"/api/v1/jobs/{owned['job']}").status_code == 404


def test_the_admin_token_of_the_settings_signs_in_whatever_it_looks_like(anon, app):
    from trainq.service.auth import seed_admin

    secret = "automation-secret-without-the-usual-prefix"  # TRAINQ_ADMIN_TOKEN is any string the operator chose
    with app.extensions["trainq"].sessions() as session:
        seed_admin(session, secret)
        session.commit()
    assert sign_in(anon, "admin", secret[:-1])[0].status_code == 401
    answer, _ = sign_in(anon, "admin", secret)
    assert answer.status_code == 302 and answer.headers["Location"] == "/"
    assert anon.get("/api/v1/me").get_json()["name"] == "admin"


def test_every_page_says_so_when_the_chart_library_is_missing(client, monkeypatch, tmp_path):
    from trainq.service import dashboard

    assert 'id="missing-assets"' not in client.get("/").get_data(as_text=True)
    monkeypatch.setattr(dashboard, "ASSET_DIR", tmp_path)  # an installation built without npm
    for page in ("/", "/compare", "/workers", "/submit", "/sweeps"):
        body = client.get(page).get_data(as_text=True)
        assert 'id="missing-assets"' in body and "uPlot.iife.min.js" in body and "npm ci" in body, page
    assert client.get("/assets/uplot.js").status_code == 404


def test_sign_in_refuses_wrong_secrets_and_foreign_redirects(anon, tokens):
    assert sign_in(anon, "alice", "wrong")[0].status_code == 401
    assert sign_in(anon, "alice", tokens["bob"])[0].status_code == 401  # bob's token is not alice's
    for target in ("https://evil.example/", "//evil.example/", "/\\evil.example"):
        answer, _ = sign_in(anon.application.test_client(), "alice", "alice-password", target)
        assert answer.headers["Location"] == "/"


def test_login_without_csrf_is_refused(anon):
    assert anon.post("/login", data={"username": "alice", "password": "alice-password"}).status_code == 403


def test_login_is_rate_limited(anon, settings):
    for _ in range(settings.login_per_minute):
        assert sign_in(anon, "alice", "wrong")[0].status_code == 401
    answer = sign_in(anon, "alice", "alice-password")[0]
    assert answer.status_code == 429 and int(answer.headers["Retry-After"]) >= 1


def test_submission_is_rate_limited_per_user(client_as, app):
    app.extensions["trainq"].settings.submit_per_minute = 3
    alice, bob = client_as("alice"), client_as("bob")
    assert [alice.post("/api/v1/jobs", json=mlp()).status_code for _ in range(4)] == [201, 201, 201, 429]
    assert bob.post("/api/v1/jobs", json=mlp()).status_code == 201


def test_dashboard_pages_send_anonymous_visitors_to_sign_in(anon):
    answer = anon.get(f"/jobs/{ZERO}")
    assert answer.status_code == 302 and answer.headers["Location"].startswith("/login?next=/jobs/")


# ---------------------------------------------------------------------------------------------------------------------
# Output stays inert
# ---------------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, shown", [
    ("<script>alert(1)</script>", "&lt;script&gt;alert(1)&lt;/script&gt;"),
    ('"><img src=x onerror=alert(1)>', "&#34;&gt;&lt;img src=x onerror=alert(1)&gt;"),
    ("{{7*7}}", "{{7*7}}"),  # shown as written: a template never evaluates user text
])
def test_hostile_names_are_text_in_the_dashboard(client, name, shown):
    job = submit(client, with_(mlp(), name=name))
    for page in ("/", f"/jobs/{job['id']}"):
        html = client.get(page).get_data(as_text=True)
        assert shown in html
        if "<" in name:
            assert name not in html


def test_pages_forbid_inline_scripts(client):
    answer = client.get("/")
    policy = answer.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    assert answer.headers["X-Content-Type-Options"] == "nosniff"


def test_csv_export_defuses_formulas(client):
    for name in ("=HYPERLINK(\"http://x\")", "+1", "-1", "@SUM(A1)", "plain"):
        submit(client, with_(mlp(), name=name))
    rows = list(csv.reader(io.StringIO(client.get("/api/v1/jobs.csv").get_data(as_text=True))))
    names = [row[1] for row in rows[1:]]
    assert sorted(names) == sorted(["'=HYPERLINK(\"http://x\")", "'+1", "'-1", "'@SUM(A1)", "plain"])


# ---------------------------------------------------------------------------------------------------------------------
# Paths and sizes
# ---------------------------------------------------------------------------------------------------------------------

TRAVERSALS = ["../../etc/passwd", "..%2f..%2fetc%2fpasswd", "%2e%2e/%2e%2e/etc/passwd", "%252e%252e%252fetc",
              "/etc/passwd", "..\\..\\windows\\win.ini", "%5c..%5c..", "x#/../../", "....//....//etc/passwd",
              ZERO + "/../../" + ZERO]


@pytest.mark.parametrize("evil", TRAVERSALS)
def test_file_routes_never_leave_the_storage_root(client, owned, evil):
    for route in (f"/api/v1/jobs/{owned['job']}/checkpoints/{evil}/download",
                  f"/api/v1/jobs/{evil}/checkpoints/{owned['ckpt']}/download",
                  f"/api/v1/jobs/{owned['job']}/checkpoints/{evil}"):
        answer = client.get(route)
        assert answer.status_code in (400, 404), route
        assert b"root:" not in answer.data


def test_models_over_the_pools_limits_are_refused_with_the_estimate(client, app):
    settings = app.extensions["trainq"].settings
    settings.max_params = 10_000
    answer = client.post("/api/v1/jobs", json=mlp(hidden=(512, 512)))
    assert answer.status_code == 422 and answer.json["error"] == "too_large"
    assert answer.json["estimate"]["params"] == 64 * 512 + 512 + 512 * 512 + 512 + 512 * 10 + 10
    assert answer.json["limit"]["params"] == 10_000
    assert answer.json["errors"] == [{"path": "model.layers", "message": "0.3 M parameters, over the limit of 10,000 "
                                                                        "(TRAINQ_MAX_PARAMS)"}]
    settings.max_params, settings.max_memory_bytes = 10**9, 1024**3
    answer = client.post("/api/v1/jobs", json=mlp(hidden=(8192, 8192), batch_size=4096))
    assert answer.status_code == 422
    [error] = answer.json["errors"]
    assert error["path"] == "model" and "GiB of memory, over the limit of 1.0 GiB (TRAINQ_MAX_MEMORY_BYTES)" in \
        error["message"]
    assert client.get("/api/v1/jobs").json["total"] == 0


@pytest.mark.parametrize("body", [
    '{"name": "' + "x" * 3_000_000 + '"}',
    '{"name": "a\\u0000b", "dataset": {"name": "digits"}}',
    '{"training": {"seed": 123456789012345678901234567890}}',
    '{"optimizer": {"type": "adam", "lr": 1e400}}',
    '{"optimizer": {"type": "adam", "lr": 10' + "0" * 400 + '}}',
])
def test_hostile_values_get_a_4xx(client, body):
    answer = client.post("/api/v1/jobs", data=body)
    assert 400 <= answer.status_code < 500, answer.json


@pytest.mark.parametrize("route", ["/api/v1/jobs?pool=a%00b", "/api/v1/jobs?name=%00", "/api/v1/jobs.csv?pool=%00",
                                   "/api/v1/jobs?%00=1"])
def test_nul_in_a_query_is_a_400_not_a_database_error(client, route):
    answer = client.get(route)
    assert answer.status_code == 400 and "NUL" in answer.json["message"]


def test_nul_in_stored_strings_is_refused_with_its_path(client, worker_headers):
    answer = client.post("/api/v1/tokens", json={"label": "a\x00b"})
    assert answer.status_code == 400 and answer.json["errors"][0]["path"] == "label"
    job = submit(client)
    c = claim(client, job["id"], worker_headers).json
    answer = client.post(f"/api/v1/worker/attempts/{c['attempt_id']}/events",
                         json={"events": [{"message": "ok"}, {"message": "x\x00"}]},
                         headers=attempt_headers(worker_headers, c))
    assert answer.status_code == 400 and answer.json["errors"][0]["path"] == "events[1].message"
    assert sign_in(client.application.test_client(), "al\x00ice", "alice-password")[0].status_code == 401
