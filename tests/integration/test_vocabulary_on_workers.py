"""Every registered entry on the worker path: the job succeeds on a real worker and its training loss falls."""

from __future__ import annotations

import pytest

from tests.models.test_vocabulary import CASES

pytestmark = pytest.mark.integration


def test_every_entry_trains_on_a_worker_and_lowers_its_loss(stack):
    ids = {case: stack.submit({**spec, "name": case}) for case, spec in sorted(CASES.items())}
    failures = []
    for case, job_id in ids.items():
        job = stack.wait(job_id, timeout=300)
        if job["status"] != "succeeded":
            failures.append((case, job["status"], job["error"]))
            continue
        losses = stack.get(f"/api/v1/jobs/{job_id}/metrics?names=train_loss")["series"]["train_loss"]["value"]
        if not losses[-1] < losses[0]:
            failures.append((case, "loss did not fall", losses))
    assert failures == [], failures
