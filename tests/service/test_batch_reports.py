"""POST /api/v1/worker/batch: the reports of many attempts in one request (a pack's members, one worker)."""

from __future__ import annotations

from tests.service.test_api import claim, submit


def members(client, worker_headers, n: int) -> list[dict]:
    """n running jobs, each with its attempt's id and token, as a pack's worker holds them."""
    out = []
    for _ in range(n):
        job = submit(client)
        claimed = claim(client, job["id"], worker_headers).json
        out.append({"attempt_id": claimed["attempt_id"], "token": claimed["token"], "job_id": job["id"]})
    return out


def report(client, worker_headers, *entries: dict):
    answer = client.post("/api/v1/worker/batch", json={"attempts": list(entries)}, headers=worker_headers)
    assert answer.status_code == 200, answer.json
    return answer.json["attempts"]


def entry(member: dict, **parts) -> dict:
    return {"attempt_id": member["attempt_id"], "token": member["token"], **parts}


def series(client, job_id: str) -> dict:
    return {name: list(zip(s["step"], s["value"]))
            for name, s in client.get(f"/api/v1/jobs/{job_id}/metrics").json["series"].items()}


def worker_events(client, job_id: str) -> list[tuple[str, str]]:
    return [(e["level"], e["message"]) for e in client.get(f"/api/v1/jobs/{job_id}/events").json["events"]
            if e["source"] == "worker"]


def test_each_members_points_events_and_beat_are_stored_and_answered_in_order(client, worker_headers):
    a, b, c = members(client, worker_headers, 3)
    assert client.post(f"/api/v1/jobs/{b['job_id']}/cancel").status_code == 200  # running: a cancel is asked
    points = {m["job_id"]: [["train_loss", 1, 1, 0.5 + i], ["val_loss", 1, 1, 0.6 + i], ["train_loss", 2, 2, 0.4 + i]]
              for i, m in enumerate((a, b, c))}
    answers = report(client, worker_headers,
                     entry(a, heartbeat={"epoch": 2}, points=points[a["job_id"]],
                           events=[{"message": "epoch 1 done"}, {"message": "slow", "level": "warning"}]),
                     entry(b, heartbeat={"epoch": 1}, points=points[b["job_id"]]),
                     entry(c, points=points[c["job_id"]], events=[{"message": "no beat this time"}]))
    assert answers == [{"attempt_id": a["attempt_id"], "cancel": False},
                       {"attempt_id": b["attempt_id"], "cancel": True}, {"attempt_id": c["attempt_id"]}]
    for i, m in enumerate((a, b, c)):
        assert series(client, m["job_id"]) == {"train_loss": [(1, 0.5 + i), (2, 0.4 + i)], "val_loss": [(1, 0.6 + i)]}
        assert client.get(f"/api/v1/jobs/{m['job_id']}").json["epoch"] == 2  # the points' epoch (and a's beat)
    assert worker_events(client, a["job_id"]) == [("info", "epoch 1 done"), ("warning", "slow")]
    assert worker_events(client, c["job_id"]) == [("info", "no beat this time")]
    # The same points again (a retried batch) are stored once; new ones join them
    report(client, worker_headers, entry(a, points=[*points[a["job_id"]], ["train_loss", 3, 3, 0.3]]))
    assert series(client, a["job_id"])["train_loss"] == [(1, 0.5), (2, 0.4), (3, 0.3)]
    assert client.get(f"/api/v1/jobs/{a['job_id']}").json["epoch"] == 3


def test_a_fenced_or_unknown_member_changes_nothing_and_the_others_are_stored(client, worker_headers):
    live, done = members(client, worker_headers, 2)
    finished = client.post(f"/api/v1/worker/attempts/{done['attempt_id']}/finish", json={"status": "failed"},
                           headers={**worker_headers, "X-Trainq-Attempt-Token": done["token"]})
    assert finished.status_code == 200, finished.json
    point = [["train_loss", 1, 1, 0.5]]
    answers = report(client, worker_headers,
                     entry(done, heartbeat={"epoch": 1}, points=point, events=[{"message": "late"}]),
                     entry(live, token="not-its-token", points=point, events=[{"message": "forged"}]),
                     entry(live, heartbeat={"epoch": 1}, points=point))
    assert answers == [{"attempt_id": done["attempt_id"], "fenced": True},
                       {"attempt_id": live["attempt_id"], "error": "not_found"},
                       {"attempt_id": live["attempt_id"], "cancel": False}]
    assert series(client, done["job_id"]) == {} and worker_events(client, done["job_id"]) == []
    assert client.get(f"/api/v1/jobs/{done['job_id']}").json["status"] == "failed"
    assert series(client, live["job_id"]) == {"train_loss": [(1, 0.5)]} and worker_events(client, live["job_id"]) == []


def test_a_finish_in_a_batch_ends_its_job_beside_reports_of_the_others(client, worker_headers):
    a, b = members(client, worker_headers, 2)
    answers = report(client, worker_headers,
                     entry(a, points=[["train_loss", 1, 1, 0.5]], finish={"status": "succeeded", "epoch": 1,
                                                                         "metrics": {"test_accuracy": 0.9}}),
                     entry(b, heartbeat={"epoch": 1}, points=[["train_loss", 1, 1, 0.7]]))
    assert answers == [{"attempt_id": a["attempt_id"], "status": "succeeded"},
                       {"attempt_id": b["attempt_id"], "cancel": False}]
    assert client.get(f"/api/v1/jobs/{a['job_id']}").json["metrics"]["test_accuracy"] == 0.9
    assert series(client, a["job_id"]) == {"train_loss": [(1, 0.5)]}
    assert client.get(f"/api/v1/jobs/{b['job_id']}").json["status"] == "running"
    # its attempt is no longer live: a later report of it is fenced
    assert report(client, worker_headers, entry(a, points=[["train_loss", 2, 2, 0.1]])) == [
        {"attempt_id": a["attempt_id"], "fenced": True}]


def test_a_beat_with_an_epoch_no_column_holds_still_extends_the_lease_and_is_no_server_error(client, worker_headers):
    """An epoch past a 32-bit integer (or a boolean) is not stored, as on the single heartbeat route; the beat
    counts."""
    a, b = members(client, worker_headers, 2)
    report(client, worker_headers, entry(a, heartbeat={"epoch": 4}), entry(b, heartbeat={"epoch": 4}))
    answers = report(client, worker_headers, entry(a, heartbeat={"epoch": 2**40}), entry(b, heartbeat={"epoch": True}))
    assert answers == [{"attempt_id": m["attempt_id"], "cancel": False} for m in (a, b)]
    assert [client.get(f"/api/v1/jobs/{m['job_id']}").json["epoch"] for m in (a, b)] == [4, 4]
    # and beside a finish (the entry-by-entry path) likewise
    answers = report(client, worker_headers, entry(a, heartbeat={"epoch": 2**40}),
                     entry(b, finish={"status": "failed"}))
    assert answers[0] == {"attempt_id": a["attempt_id"], "cancel": False} and answers[1]["status"] == "failed"
