"""The life of a job in SQL: submit, claim, heartbeat, report, finish, cancel, reconcile.

Plain functions on a session, so the HTTP layer stays thin. Every write from a worker names its attempt
and proves it with the attempt token; a conditional update decides, so a stale attempt changes nothing.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Callable, Iterable

from sqlalchemy import and_, bindparam, func, insert, or_, select, text, update
from sqlalchemy.orm import Session

from trainq.models.spec import JobSpec, Plan, layer_packages, pinned
from trainq.service.db import UTCDateTime, utcnow
from trainq.service.objects import checkpoint_key
from trainq.service.tables import Attempt, Checkpoint, Event, Job, JobStatus, Metric, Sweep, Worker, new_id
from trainq.service.telemetry import LEASES_EXPIRED, METRIC_POINTS

# Sends a job id to its pool's queue (with `members`, a pack's ids in one message); False if the broker did not take it
Enqueue = Callable[..., bool]


class Conflict(Exception):
    """The job is not in a state that allows this (another attempt holds it, it has finished...)."""


class Fenced(Conflict):
    """The attempt is no longer the job's live attempt: its writes are refused."""


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def add_event(session: Session, job_id: str, message: str, *, source: str = "service", level: str = "info") -> None:
    session.add(Event(job_id=job_id, message=message, source=source, level=level))


# ---------------------------------------------------------------------------------------------------------------------
# Submitting and cancelling
# ---------------------------------------------------------------------------------------------------------------------


def submit(session: Session, spec: JobSpec, plan: Plan, owner_id: str | None = None,
           dataset_id: str | None = None) -> Job:
    job = new_job(spec, plan, owner_id, dataset_id)
    submit_many(session, [job])
    return job


def new_job(spec: JobSpec, plan: Plan, owner_id: str | None = None, dataset_id: str | None = None,
            **fields: Any) -> Job:
    """A job as submitted (its id given), for `submit_many` to store."""
    return Job(id=new_id(), owner_id=owner_id, dataset_id=dataset_id, name=spec.name, project=spec.project,
               tags=dict(spec.tags) or None,
               spec=pinned(spec), enqueued_at=utcnow(), pool=spec.resources.pool,
               device=spec.resources.device, priority=spec.resources.priority, params=plan.params,
               max_epochs=spec.training.epochs, plugins=layer_packages(spec), **fields)


def submit_many(session: Session, made: list[Job]) -> None:
    """Store new jobs in one INSERT, then their first events (an event's row needs its job's, and the session does
    not order the two tables' rows by itself: the jobs are flushed first)."""
    session.add_all(made)
    session.flush()
    for job in made:
        add_event(session, job.id, f"submitted to pool {job.pool} ({job.params} parameters)")


def mark_enqueued(session: Session, job: Job, enqueue: Enqueue, pack: list[Job] | None = None) -> bool:
    """Send a committed job (or a pack of them, in one message) to the broker. The jobs were stored with enqueued_at
    set, so success costs no second write; on failure enqueued_at is cleared and the reconciler sends them later.
    Return whether they were sent."""
    sent = enqueue(job, members=[j.id for j in pack]) if pack else enqueue(job)
    if sent:
        return True
    for each in pack or [job]:
        session.execute(update(Job).where(Job.id == each.id, Job.status == JobStatus.queued.value)
                        .values(enqueued_at=None))
        add_event(session, each.id, "the broker did not take the job; it will be sent again", level="warning")
    return False


def by_pack(queued: Iterable[Job]) -> list[list[Job]]:
    """Jobs as the broker gets them: a pack's jobs together in one message, every other job alone."""
    out: list[list[Job]] = []
    packs: dict[str, list[Job]] = {}
    for job in queued:
        if job.pack_id is None:
            out.append([job])
        elif job.pack_id in packs:
            packs[job.pack_id].append(job)
        else:
            packs[job.pack_id] = [job]
            out.append(packs[job.pack_id])
    return out


def enqueue_all(session: Session, created: Iterable[Job], enqueue: Enqueue) -> None:
    """Send each committed job, or pack of jobs, to the broker; what it did not take stays queued in SQL for the
    reconciler."""
    for group in by_pack(created):
        if not mark_enqueued(session, group[0], enqueue, group if len(group) > 1 else None):
            session.commit()


def cancel(session: Session, job: Job) -> Job:
    """Cancel a job: a queued one never starts, a running one is told at its next heartbeat."""
    now = utcnow()
    if job.status == JobStatus.queued.value:
        done = session.execute(update(Job).where(Job.id == job.id, Job.status == JobStatus.queued.value).values(
            status=JobStatus.cancelled.value, stop_reason="cancelled", finished_at=now, cancel_requested=True))
        if done.rowcount:
            add_event(session, job.id, "cancelled before it started")
    elif job.status == JobStatus.running.value and not job.cancel_requested:
        session.execute(update(Job).where(Job.id == job.id).values(cancel_requested=True))
        add_event(session, job.id, "cancel requested; the worker stops at its next heartbeat")
    session.flush()
    session.refresh(job)
    return job


# ---------------------------------------------------------------------------------------------------------------------
# The worker's side
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class Claim:
    job: Job
    attempt: Attempt
    token: str
    resume: Checkpoint | None


def claim(session: Session, job_ids: list[str], worker: str, lease: timedelta) -> dict[str, Claim | Exception]:
    """Take jobs that are queued, or whose lease expired; hand each a fresh attempt and token. Per job: its Claim, a
    LookupError (no such job) or a Conflict (not claimable now: it changes nothing). Each claim is one fenced
    UPDATE; the rest is a few statements for all of them (a pack's 32 members were 250 statements one by one)."""
    now = utcnow()
    found = {job.id: job for job in session.scalars(select(Job).where(Job.id.in_(set(job_ids))))}
    claimable = or_(
        and_(Job.status == JobStatus.queued.value, Job.cancel_requested.is_(False)),
        and_(Job.status == JobStatus.running.value, Job.lease_expires_at < now, Job.cancel_requested.is_(False)),
    )
    out: dict[str, Claim | Exception] = {}
    won: list[tuple[Job, str, str, int]] = []
    for job_id in dict.fromkeys(job_ids):
        job = found.get(job_id)
        if job is None:
            out[job_id] = LookupError(job_id)
            continue
        attempt_id, token = new_id(), secrets.token_urlsafe(32)
        number = session.execute(update(Job).where(Job.id == job_id, claimable).values(
            status=JobStatus.running.value, current_attempt_id=attempt_id, lease_expires_at=now + lease,
            worker=worker, attempts=Job.attempts + 1, started_at=Job.started_at if job.started_at else now,
        ).returning(Job.attempts).execution_options(synchronize_session=False)).scalar()
        if number is None:
            out[job_id] = Conflict(f"job {job_id} is {job.status} and held by another attempt"
                                   if job.status == "running" else f"job {job_id} is {job.status}")
            continue
        won.append((job, attempt_id, token, number))
    if not won:
        return out
    ids = [job.id for job, *_ in won]
    session.scalars(select(Job).where(Job.id.in_(ids)).execution_options(populate_existing=True)).all()
    for old in session.scalars(select(Attempt).where(Attempt.job_id.in_(ids), Attempt.status == "running")):
        old.status, old.ended_at = "lost", now
    resumes = latest_checkpoints(session, ids)
    for job, attempt_id, token, number in won:
        attempt = Attempt(id=attempt_id, job_id=job.id, number=number, token_hash=hash_token(token), worker=worker)
        session.add(attempt)
        resume = resumes.get(job.id)
        add_event(session, job.id, f"attempt {number} claimed by {worker}"
                  + (f", resuming from epoch {resume.epoch}" if resume else ""))
        out[job.id] = Claim(job, attempt, token, resume)
    session.flush()
    return out


def load_attempts(session: Session, attempt_ids: list[str]) -> list:
    """Load these attempts, their jobs and their jobs' sweeps in three queries, so that `live_attempt` and the
    sweep's pruner find them in the session instead of querying three times per attempt (a pack's 32 members
    asking the pruner at once). The caller keeps the returned list while it works: the session holds what it loaded
    only as long as something refers to it."""
    attempts = session.scalars(select(Attempt).where(Attempt.id.in_(set(attempt_ids)))).all()
    held = session.scalars(select(Job).where(Job.id.in_({a.job_id for a in attempts}))).all()
    sweeps = session.scalars(select(Sweep).where(Sweep.id.in_({j.sweep_id for j in held if j.sweep_id}))).all()
    return [*attempts, *held, *sweeps]


def live_attempt(session: Session, attempt_id: str, token: str) -> tuple[Attempt, Job]:
    """Return the attempt and its job if this attempt is the job's live one; raise Fenced otherwise."""
    attempt = session.get(Attempt, attempt_id)
    if attempt is None or not secrets.compare_digest(attempt.token_hash, hash_token(token)):
        raise LookupError(attempt_id)
    job = session.get(Job, attempt.job_id)
    if job.current_attempt_id != attempt.id or job.status != JobStatus.running.value or attempt.status != "running":
        raise Fenced(f"attempt {attempt.number} of job {job.id} is no longer live")
    return attempt, job


def heartbeat(session: Session, attempt: Attempt, lease: timedelta, epoch: int | None) -> bool:
    """Extend the lease; return whether a cancel was requested."""
    cancel = extend_lease(session, attempt.job_id, attempt.id, utcnow() + lease, epoch)
    if cancel is None:
        raise Fenced("the lease was lost")
    return cancel


def extend_lease(session: Session, job_id: str, attempt_id: str, until: datetime, epoch: int | None) -> bool | None:
    """One fenced UPDATE: the lease (and the epoch reached) of the job's live attempt; the job's cancel flag, or None
    when this attempt is no longer the job's live one."""
    values: dict[str, Any] = {"lease_expires_at": until}
    if epoch is not None:
        values["epoch"] = epoch
    row = session.execute(update(Job).where(Job.id == job_id, Job.current_attempt_id == attempt_id,
                                            Job.status == JobStatus.running.value).values(**values)
                          .returning(Job.cancel_requested)).first()
    return None if row is None else bool(row[0])


# One statement, one round trip, in autocommit: the lease of a live attempt extended and its job's cancel flag read.
# 500 workers' job heartbeats every 2 s are a quarter of the service's requests; the ORM path (attempt, job, update,
# cancel flag, commit) took five round trips. No row: not live, or no such attempt (the ORM path tells which).
QUICK_BEAT = text(
    "UPDATE jobs SET lease_expires_at = :until, epoch = COALESCE(CAST(:epoch AS integer), jobs.epoch) "
    "FROM attempts a WHERE a.id = :attempt AND a.token_hash = :hash AND a.status = 'running' "
    "AND jobs.id = a.job_id AND jobs.current_attempt_id = a.id AND jobs.status = 'running' "
    "RETURNING jobs.cancel_requested").bindparams(bindparam("until", type_=UTCDateTime))


def quick_heartbeat(conn, attempt_id: str, token: str, lease: timedelta, epoch: int | None) -> bool | None:
    """Extend a live attempt's lease in one statement; whether a cancel was asked, or None if it is not live."""
    row = conn.execute(QUICK_BEAT, {"until": utcnow() + lease, "epoch": epoch, "attempt": attempt_id,
                                    "hash": hash_token(token)}).first()
    return None if row is None else bool(row[0])


def record_metrics(session: Session, job_id: str, points: Iterable[tuple[str, int, int, float]]) -> int:
    """Insert metric points; a point already stored for (job, name, step) is kept, so retries never duplicate."""
    return record_points(session, [(job_id, *point) for point in points])


def record_points(session: Session, rows: list[tuple[str, str, int, int, float]]) -> int:
    """Insert (job_id, name, step, epoch, value) points of one job or many in one statement, each job's epoch
    raised to its newest point's; a point already stored for (job, name, step) is kept."""
    if not rows:
        return 0
    job_ids, names, steps, epochs, values = (list(column) for column in zip(*rows))
    if session.get_bind().dialect.name == "postgresql":
        # One statement for the whole batch: the arrays travel as five parameters and the server unnests them,
        # several times faster than one INSERT per row (executemany).
        stored = session.execute(text(
            "INSERT INTO metrics (job_id, name, step, epoch, value) "
            "SELECT * FROM unnest(CAST(:job_ids AS varchar[]), CAST(:names AS varchar[]), CAST(:steps AS bigint[]), "
            "CAST(:epochs AS integer[]), CAST(:values AS double precision[])) "
            "ON CONFLICT (job_id, name, step) DO NOTHING"),
            {"job_ids": job_ids, "names": names, "steps": steps, "epochs": epochs, "values": values}).rowcount
    else:
        from sqlalchemy.dialects.sqlite import insert

        stored = session.execute(  # the table's Core insert: its result tells how many rows were new
            insert(Metric.__table__).on_conflict_do_nothing(index_elements=["job_id", "name", "step"]),
            [{"job_id": j, "name": n, "step": s, "epoch": e, "value": v} for j, n, s, e, v in rows]).rowcount
    newest: dict[str, int] = {}
    for job_id, epoch in zip(job_ids, epochs):
        newest[job_id] = max(epoch, newest.get(job_id, epoch))
    jobs_table = Job.__table__
    raise_epoch = update(jobs_table).where(jobs_table.c.id == bindparam("b_id"),
                                           jobs_table.c.epoch < bindparam("b_epoch"))
    session.execute(raise_epoch.values(epoch=bindparam("b_epoch")),
                    [{"b_id": job_id, "b_epoch": epoch} for job_id, epoch in newest.items()])
    for job_id in newest:  # a job this session holds reads its epoch afresh (the statement above is Core's)
        held = session.identity_map.get(session.identity_key(Job, job_id))
        if held is not None:
            session.expire(held, ["epoch"])
    METRIC_POINTS.inc(max(0, stored or 0))  # new rows only: a retried batch is not counted twice
    return len(rows)


@dataclass
class Report:
    """One attempt's entry in a worker's batch: its heartbeat (beat, epoch), metric points and events."""
    attempt_id: str
    token: str
    beat: bool
    epoch: int | None
    points: list[tuple[str, int, int, float]]
    events: list[tuple[str, str]]  # (message, level)


def report_many(session: Session, reports: list[Report], lease: timedelta) -> list[dict[str, Any]]:
    """A pack's report round, many attempts' heartbeats, points and events, in a few statements instead of a
    savepoint and seven statements each (6 ms a member here): the attempts loaded together (`load_attempts`, then
    checked by `live_attempt` as any report is), each beat one fenced UPDATE, every point in one INSERT, every event
    in one. Each answer: {cancel} for a beat, {} without one, {fenced: True} for an attempt no longer live,
    {error: not_found} for an unknown one or a wrong token; those change nothing."""
    held = load_attempts(session, [r.attempt_id for r in reports])  # noqa: F841 - kept in the session while we work
    until, answers, live = utcnow() + lease, [], []
    for r in reports:
        try:
            attempt, job = live_attempt(session, r.attempt_id, r.token)
        except LookupError:
            answers.append({"error": "not_found"})
            continue
        except Fenced:
            answers.append({"fenced": True})
            continue
        answer: dict[str, Any] = {}
        if r.beat:
            cancel = extend_lease(session, job.id, attempt.id, until, r.epoch)
            if cancel is None:  # fenced between the check and the beat
                answers.append({"fenced": True})
                continue
            answer["cancel"] = cancel
        answers.append(answer)
        live.append((job.id, r))
    record_points(session, [(job_id, *point) for job_id, r in live for point in r.points])
    now = utcnow()
    events = [{"job_id": job_id, "created_at": now, "source": "worker", "level": level, "message": message}
              for job_id, r in live for message, level in r.events]
    if events:
        session.execute(insert(Event.__table__), events)
    return answers


def store_checkpoint(session: Session, attempt: Attempt, job: Job, blob: bytes, info: dict[str, Any],
                     store, keep: int) -> Checkpoint:
    """Write a checkpoint that came through the API to the store, record it, and prune to the best plus the latest
    `keep`."""
    ckpt = new_checkpoint(attempt, job, info, len(blob), hashlib.sha256(blob).hexdigest())
    store.put(checkpoint_key(job.id, ckpt.id), blob)
    return record_checkpoint(session, ckpt, store, keep)


def new_checkpoint(attempt: Attempt, job: Job, info: dict[str, Any], size: int, digest: str,
                   checkpoint_id: str | None = None) -> Checkpoint:
    """A checkpoint's row (not yet added), its id known before the file is stored under it."""
    return Checkpoint(id=checkpoint_id or new_id(), job_id=job.id, attempt_id=attempt.id,
                      epoch=int(info["epoch"]), step=int(info["step"]), metric_name=info.get("metric_name"),
                      metric=info.get("metric"), size=size, sha256=digest, is_best=bool(info.get("is_best")))


def record_checkpoint(session: Session, ckpt: Checkpoint, store, keep: int) -> Checkpoint:
    """A stored checkpoint's row is in the session: make it the only best if it is one, and prune the others."""
    session.add(ckpt)
    session.flush()
    if ckpt.is_best:
        session.execute(update(Checkpoint).where(Checkpoint.job_id == ckpt.job_id, Checkpoint.id != ckpt.id)
                        .values(is_best=False))
    prune_checkpoints(session, ckpt.job_id, store, keep)
    return ckpt


def latest_checkpoint(session: Session, job_id: str) -> Checkpoint | None:
    return latest_checkpoints(session, [job_id]).get(job_id)


def latest_checkpoints(session: Session, job_ids: list[str]) -> dict[str, Checkpoint]:
    """Each job's latest checkpoint (the furthest step; the newest of a step), for those that have one: one query."""
    newest = func.row_number().over(partition_by=Checkpoint.job_id,
                                    order_by=(Checkpoint.step.desc(), Checkpoint.created_at.desc()))
    ranked = select(Checkpoint.id, newest.label("rank")).where(Checkpoint.job_id.in_(set(job_ids))).subquery()
    return {c.job_id: c for c in session.scalars(select(Checkpoint).join(ranked, ranked.c.id == Checkpoint.id)
                                                 .where(ranked.c.rank == 1))}


def prune_checkpoints(session: Session, job_id: str, store, keep: int) -> None:
    ckpts = session.scalars(select(Checkpoint).where(Checkpoint.job_id == job_id)
                            .order_by(Checkpoint.step.desc(), Checkpoint.created_at.desc())).all()
    for old in [c for c in ckpts[keep:] if not c.is_best]:
        session.delete(old)
        store.delete(checkpoint_key(job_id, old.id))


def finish(session: Session, attempt: Attempt, job: Job, outcome: dict[str, Any]) -> Job:
    """Record an attempt's final outcome, only if it is still the live attempt."""
    now = utcnow()
    status = outcome["status"]
    done = session.execute(update(Job).where(
        Job.id == job.id, Job.current_attempt_id == attempt.id, Job.status == JobStatus.running.value,
    ).values(status=status, stop_reason=outcome.get("stop_reason"), finished_at=now, lease_expires_at=None,
             epoch=outcome.get("epoch", job.epoch), best_epoch=outcome.get("best_epoch"),
             metrics=outcome.get("metrics") or {}, error=outcome.get("error")))
    if done.rowcount != 1:
        raise Fenced("the lease was lost before the attempt finished")
    attempt.status, attempt.ended_at = "ended", now
    session.execute(update(Worker).where(Worker.name == attempt.worker).values(jobs_done=Worker.jobs_done + 1))
    reason = outcome.get("stop_reason")
    add_event(session, job.id, f"{status} ({reason}) after {outcome.get('epoch', job.epoch)} epochs",
              level="error" if status == JobStatus.failed.value else "info")
    session.flush()
    session.refresh(job)
    return job


def release(session: Session, attempt: Attempt, job: Job, reason: str) -> Job:
    """Hand a running job back to the queue (its worker is shutting down); it resumes from its latest checkpoint."""
    now = utcnow()
    done = session.execute(update(Job).where(
        Job.id == job.id, Job.current_attempt_id == attempt.id, Job.status == JobStatus.running.value,
    ).values(status=JobStatus.queued.value, current_attempt_id=None, lease_expires_at=None, enqueued_at=now))
    if done.rowcount != 1:
        raise Fenced("the lease was lost before the attempt was handed back")
    attempt.status, attempt.ended_at = "released", now
    latest = latest_checkpoint(session, job.id)
    add_event(session, job.id, f"handed back by {attempt.worker} ({reason[:200]}); resumes from "
              + (f"epoch {latest.epoch}" if latest else "the start"), level="warning")
    session.flush()
    session.refresh(job)
    return job


# ---------------------------------------------------------------------------------------------------------------------
# The reconciler: SQL decides what runs, the broker only delivers
# ---------------------------------------------------------------------------------------------------------------------


SEND_GRACE = timedelta(seconds=10)  # a job just committed may not have reached the broker yet


def reconcile(session: Session, enqueue: Enqueue, requeue_after: timedelta, now: datetime | None = None,
              in_broker: Callable[[set[str]], set[str] | None] | None = None, max_attempts: int = 3) -> dict:
    """Requeue jobs whose lease expired, and send again queued jobs the broker lost.

    `in_broker(queues)` returns the job ids the broker holds (None if it cannot tell): a queued job missing from it
    is sent again at once; without it, a job queued longer than `requeue_after` is.
    """
    now = now or utcnow()
    expired = session.scalars(select(Job).where(Job.status == JobStatus.running.value,
                                                Job.lease_expires_at < now)).all()
    requeued, lost_cancelled, resent, given_up = 0, 0, 0, 0
    for job in expired:
        if job.attempts >= max_attempts and not job.cancel_requested:
            # A job that takes its worker down every time (killed for memory, a crash in native code) would
            # otherwise be requeued forever and starve the pool.
            reason = (f"lost its worker on each of {job.attempts} attempts (last: {job.worker}); "
                      "a process killed for memory is the usual cause")
            done = session.execute(update(Job).where(Job.id == job.id, Job.current_attempt_id == job.current_attempt_id,
                                                     Job.lease_expires_at < now).values(
                status=JobStatus.failed.value, stop_reason="error", finished_at=now, lease_expires_at=None,
                error=reason))
            if done.rowcount:
                session.execute(update(Attempt).where(Attempt.job_id == job.id, Attempt.status == "running")
                                .values(status="lost", ended_at=now))
                given_up += 1
                add_event(session, job.id, f"failed: {reason}", level="error")
            continue
        if job.cancel_requested:
            done = session.execute(update(Job).where(Job.id == job.id, Job.current_attempt_id == job.current_attempt_id,
                                                     Job.lease_expires_at < now).values(
                status=JobStatus.cancelled.value, stop_reason="cancelled", finished_at=now, lease_expires_at=None))
            if done.rowcount:
                lost_cancelled += 1
                add_event(session, job.id, "cancelled: its worker went silent after the cancel request")
            continue
        done = session.execute(update(Job).where(Job.id == job.id, Job.current_attempt_id == job.current_attempt_id,
                                                 Job.lease_expires_at < now).values(
            status=JobStatus.queued.value, current_attempt_id=None, lease_expires_at=None, enqueued_at=None))
        if done.rowcount:
            session.execute(update(Attempt).where(Attempt.job_id == job.id, Attempt.status == "running")
                            .values(status="lost", ended_at=now))
            requeued += 1
            add_event(session, job.id, f"lease expired (worker {job.worker} went silent); requeued", level="warning")
    session.flush()
    queued = session.scalars(select(Job).where(Job.status == JobStatus.queued.value,
                                               or_(Job.enqueued_at.is_(None), Job.enqueued_at < now - SEND_GRACE))).all()
    held = in_broker({job.queue for job in queued}) if (queued and in_broker is not None) else None
    resend = [job for job in queued if job.enqueued_at is None or (
        job.id not in held if held is not None else job.enqueued_at < now - requeue_after)]
    for group in by_pack(resend):  # a pack's members go back together: its worker resumes them as one model
        sent = enqueue(group[0], members=[j.id for j in group]) if len(group) > 1 else enqueue(group[0])
        if sent:
            for job in group:
                job.enqueued_at = now
            resent += len(group)
    LEASES_EXPIRED.inc(requeued + lost_cancelled + given_up)
    return {"requeued": requeued, "cancelled": lost_cancelled, "resent": resent, "failed": given_up}
