"""Schemathesis' own runner against a real service on PostgreSQL and Redis, from outside, as the trial that found
the `changed_since` 500 ran it: every phase (the document's examples, coverage of each parameter's edges, fuzzing,
and stateful sequences that follow the document's links), seeded and bounded in time. Not one answer may be a 5xx.
No worker runs: the jobs the fuzzer submits only queue."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.stack import ADMIN_TOKEN, Stack

pytestmark = pytest.mark.integration


def test_every_phase_of_schemathesis_finds_no_server_error(make_database, redis_url, tmp_path):
    stack = Stack(tmp_path, TRAINQ_DATABASE_URL=make_database(), TRAINQ_BROKER_URL=redis_url,
                  TRAINQ_SUBMIT_PER_MINUTE="100000")
    try:
        stack.serve()
        report, exchanges = tmp_path / "report.json", tmp_path / "exchanges.har"
        run = subprocess.run(
            [str(Path(sys.executable).parent / "st"), "run", f"{stack.url}/api/v1/openapi.json",
             "--phases", "examples,coverage,fuzzing,stateful", "--checks", "not_a_server_error",
             "--seed", "7", "--max-examples", "15", "--max-time", "120", "--workers", "1",
             # revoking a token is a sequence the links allow; here it would revoke the token this run calls with
             # (the in-process stateful test covers it with a token per scenario)
             "--exclude-operation-id", "delete_tokens_token_id",
             "--header", f"Authorization: Bearer {ADMIN_TOKEN}", "--report", "json,har", "--report-json-path", str(report),
             "--report-har-path", str(exchanges)],
            capture_output=True, text=True, timeout=400, cwd=tmp_path)
        assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
        found = json.loads(report.read_text())
        assert {phase: state["status"] for phase, state in found["phases"].items()} == {
            "examples": "success", "coverage": "success", "fuzzing": "success", "stateful": "success"}
        assert found["failures"] == [] and found["errors"] == [] and found["test_cases"]["with_failures"] == 0
        assert found["operations"]["tested"] == found["operations"]["selected"] >= 25
        assert found["test_cases"]["generated"] >= 1000, found["test_cases"]
        # Every request that carried the admin's token got past authentication. (Schemathesis' own missing_auth
        # warning is read per scenario: an operation that never answers 2xx here, a drain of a worker that does not
        # exist, is flagged when its probe without the Authorization header forms most of a scenario.)
        entries = json.loads(exchanges.read_text())["log"]["entries"]
        carries = [any(h["name"].lower() == "authorization" for h in e["request"]["headers"]) for e in entries]
        signed = [e for e, token in zip(entries, carries) if token]
        refused = [(e["request"]["method"], e["request"]["url"], e["response"]["status"]) for e in signed
                   if e["response"]["status"] in (401, 403)]
        assert len(signed) >= 1000 and not refused, refused[:20]
        unsigned = {e["response"]["status"] for e, token in zip(entries, carries) if not token}
        assert unsigned <= {401}, unsigned  # the probes without a token are refused as unauthenticated
    finally:
        stack.close()
