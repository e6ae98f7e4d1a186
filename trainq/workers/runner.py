"""Run one job on this worker: claim it, train it while reporting, and report the outcome."""

from __future__ import annotations

import logging
import math
import traceback
from dataclasses import dataclass, field

from trainq.models.checkpoint import read_meta
from trainq.models.engine import fit, pick_device
from trainq.models.spec import JobSpec, image_target, installed_packages
from trainq.settings import Settings
from trainq.workers.client import Fenced, Refused, ServiceClient
from trainq.workers.data import local_file, source, uploaded_of
from trainq.workers.reporter import PackReporter, Reporter, ReportingCallback

log = logging.getLogger(__name__)


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def out_of_memory(exc: BaseException) -> bool:
    """A GPU out-of-memory error, or the CPU allocator failing to allocate."""
    import torch

    return isinstance(exc, torch.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc))


def fit_retrying_oom(spec: JobSpec, say, *, fit=fit, resume: bytes | None = None, checkpoint_sink=None, **kwargs):
    """Train; on running out of memory, retry once with micro-batches of half the size and twice the gradient
    accumulation steps (the same effective batch, about half the activation memory), from the last checkpoint
    this attempt made. `say(message, level)` tells the job's event log. A second out-of-memory fails the job."""
    latest = {"blob": resume}

    def sink(blob: bytes, info: dict) -> None:
        latest["blob"] = blob
        if checkpoint_sink is not None:
            checkpoint_sink(blob, info)

    try:
        return fit(spec, resume=resume, checkpoint_sink=sink, **kwargs)
    except Exception as exc:  # noqa: BLE001 - only out-of-memory is retried
        if not out_of_memory(exc):
            raise
        import gc

        import torch

        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        steps = spec.training.accumulate_steps * 2
        from trainq.models.spec import batch_size

        micro = -(-batch_size(spec) // steps)
        say(f"out of memory ({type(exc).__name__}) with micro-batches of {-(-batch_size(spec) // (steps // 2))}: "
            f"retrying once with micro-batches of {micro} and {steps} gradient accumulation steps per optimizer "
            "step (the same effective batch)", "warning")
        retry = spec.model_copy(update={"training": spec.training.model_copy(update={"accumulate_steps": steps})})
        try:
            return fit(retry, resume=latest["blob"], checkpoint_sink=sink, **kwargs)
        except Exception as again:  # noqa: BLE001
            if out_of_memory(again):
                raise MemoryError(f"out of memory again with micro-batches of {micro} ({steps} accumulation "
                                  "steps): make the model or the batch smaller") from again
            raise


@dataclass
class Claimed:
    """A claimed job on this worker: its attempt, reporter, spec, data and the checkpoint it resumes from."""

    claim: dict
    reporter: Reporter
    spec: JobSpec | None = None
    arrays: tuple | None = None
    resume: bytes | None = None
    resume_batch: int = 0  # > 0: the checkpoint was written part-way through its next epoch, after this many batches
    outcome: dict = field(default_factory=dict)


def run_job(job_id: str, settings: Settings, worker: str, device: str | None = None, kind: str | None = None,
            gpus: int = 0) -> str:
    """Claim and train a job; return what happened (skipped, succeeded, failed, cancelled, fenced)."""
    return run_pack([job_id], settings, worker, device, kind, gpus)


def run_pack(job_ids: list[str], settings: Settings, worker: str, device: str | None = None, kind: str | None = None,
             gpus: int = 0) -> str:
    """Claim jobs sent together (a sweep's pack; one job alone is a pack of one) and train them: members that can
    pack train as one packed model, each still its own job with its own attempt, lease, reports and outcome. One
    job has its own reporter thread; a pack's members share one (PackReporter: one request per interval for all).
    Return what happened (skipped, or the outcomes in order)."""
    client = ServiceClient(settings.service_url, settings.worker_token)
    if len(job_ids) == 1:
        try:
            claims = [client.claim(job_ids[0], worker, kind, gpus, installed_packages())]
        except Refused as exc:  # another attempt holds it, or it finished or was cancelled: nothing to do
            log.info("job %s not claimed: %s", job_ids[0], exc)
            return "skipped"
    else:
        answers = client.call("POST", "/api/v1/worker/claims",
                              json={"job_ids": job_ids, "worker": worker, "kind": kind, "gpus": gpus,
                                    "layers": installed_packages()}).json()
        claims = [a for a in answers["claims"] if "token" in a]
        for refused in (a for a in answers["claims"] if "token" not in a):
            log.info("job %s not claimed: %s", refused["job_id"], refused.get("message"))
    if not claims:
        return "skipped"
    claimed = [Claimed(claim, Reporter(client, claim["attempt_id"], claim["token"],
                                       heartbeat_seconds=claim["heartbeat_seconds"],
                                       flush_seconds=settings.metrics_flush_seconds)) for claim in claims]
    for c in claimed:
        c.reporter.prune = c.claim.get("prune")
        c.reporter.direct = bool(c.claim.get("direct_checkpoints"))
    pack_reporter = None
    if len(claimed) == 1:
        claimed[0].reporter.start()
    else:
        pack_reporter = PackReporter(client, [c.reporter for c in claimed],
                                     heartbeat_seconds=claims[0]["heartbeat_seconds"],
                                     flush_seconds=settings.metrics_flush_seconds)
        pack_reporter.start()
    dev = pick_device(device)
    if dev.type == "cpu":
        import os

        import torch

        torch.set_num_threads(settings.cpu_threads or os.cpu_count() or 1)  # the engine picks within this share
    downloaded: dict[str, tuple] = {}  # a pack's members share their uploaded dataset: fetched once
    ready = [c for c in claimed if _prepare(client, c, dev, worker, downloaded, settings)]
    groups: dict[int | tuple, list[Claimed]] = {}
    for c in ready:  # members resuming from different epochs cannot share a pack: one pack per epoch
        key = ("mid-epoch", id(c)) if c.resume_batch else (int(c.claim["resume"]["epoch"]) if c.resume else 0)
        groups.setdefault(key, []).append(c)  # one interrupted part-way through an epoch resumes alone, there
    epochs = [e for e in groups if isinstance(e, int)]
    if len(groups) > 1:
        for epoch, group in groups.items():
            for c in group:
                if isinstance(epoch, int) and len(epochs) > 1:
                    c.reporter.event(f"resumes from epoch {epoch} while others sent with it resume from "
                                     f"{', '.join(str(e) for e in epochs if e != epoch)}: it trains apart from those")
                elif not isinstance(epoch, int):
                    c.reporter.event("resumes part-way through an epoch, where it was interrupted: it trains alone")
    index = {id(c): i for i, c in enumerate(claimed)}

    def conclude(c: Claimed) -> None:  # a member's job ends as soon as it does: the others train on meanwhile
        if pack_reporter is not None:
            done.add(id(c))  # its reporter is handed its end: no more system points (a lone job's stays open)
            r = c.reporter
            hand_back = r.draining and c.outcome.get("status") == "cancelled" and not r.cancelled
            pack_reporter.end(index[id(c)], None if hand_back else c.outcome)

    done: set[int] = set()  # members whose job ended: sampled no more
    with sampling(lambda: [c.reporter for c in ready if id(c) not in done], dev, settings.system_metrics_seconds):
        for group in groups.values():
            if len(group) > 1:
                _train_pack(group, dev, settings, conclude, pack_reporter, [index[id(c)] for c in group])
            else:
                _train_alone(group[0], dev)
                conclude(group[0])
    if pack_reporter is None:
        return _conclude(client, claimed[0], worker)
    prepared = {id(c) for c in ready}
    for c in claimed:
        if id(c) not in prepared:
            conclude(c)  # its preparation failed: the outcome says why
    ended = pack_reporter.close()
    return ", ".join(ended.get(i, "unreported") for i in range(len(claimed)))


def sampling(reporters, dev, every: float):
    """The jobs' system series while they train (nothing when TRAINQ_SYSTEM_METRICS_SECONDS is 0); `reporters()`
    names the jobs still training at each sample."""
    from contextlib import nullcontext

    from trainq.workers.system import SystemSampler

    return SystemSampler(reporters, dev, every) if every > 0 else nullcontext()


def _prepare(client: ServiceClient, c: Claimed, dev, worker: str, downloaded: dict[str, tuple],
             settings: Settings) -> bool:
    """Read the claimed job's spec, dataset (once per dataset for all the jobs claimed together) and checkpoint;
    False (and a failed outcome) if that fails."""
    claim, token = c.claim, c.claim["token"]
    try:
        c.spec = JobSpec.model_validate(claim["spec"])
        if claim.get("dataset"):
            d = claim["dataset"]
            ds = c.spec.dataset
            ds.resolve(uploaded_of(d))
            key = (d["id"], str(image_target(ds)) if d["kind"] == "images" else c.spec.training.data_placement)
            if key not in downloaded:
                path = local_file(d, lambda target: client.download_to(d["url"], token, target), settings)
                downloaded[key] = source(ds, path, settings, c.reporter.event, threads=torch_threads(),
                                         placement=c.spec.training.data_placement)
            c.arrays = downloaded[key]
        c.resume = client.download(claim["resume"]["url"], token) if claim["resume"] else None
        where = ""
        if c.resume:
            c.resume_batch = read_meta(c.resume).get("batch_in_epoch", 0)
            where = (f", resuming in epoch {claim['resume']['epoch'] + 1} at batch {c.resume_batch + 1}, where it "
                     "was interrupted" if c.resume_batch else f", resuming after epoch {claim['resume']['epoch']}")
        c.reporter.event(f"training on {dev} (worker {worker}, attempt {claim['attempt']}){where}")
        return True
    except Exception as exc:  # noqa: BLE001
        _failed(c, exc)
        return False


def _failed(c: Claimed, exc: BaseException) -> None:
    log.exception("job %s failed", c.claim["job_id"])
    c.reporter.event("".join(traceback.format_exception(exc)), level="error")
    c.outcome = {"status": "failed", "stop_reason": "error", "epoch": c.reporter.epoch,
                 "error": f"{type(exc).__name__}: {exc}"}


def _outcome(c: Claimed, result, failed: str | None = None) -> None:
    reporter = c.reporter
    if failed:
        reporter.event(failed, level="error")
        c.outcome = {"status": "failed", "stop_reason": "error", "epoch": result.epochs, "error": failed}
        return
    status = "cancelled" if result.stop_reason == "cancelled" else "succeeded"
    stop_reason = result.stop_reason
    if reporter.pruned and not reporter.cancelled and not reporter.draining:
        status = stop_reason = "pruned"
    c.outcome = {"status": status, "stop_reason": stop_reason, "epoch": result.epochs,
                 "best_epoch": result.best_epoch, "metrics": result.metrics}
    reporter.event(f"finished: {stop_reason} after {result.epochs} epochs "
                   f"(setup {result.setup_seconds:.2f}s, training {result.train_seconds:.2f}s)")


def _train_alone(c: Claimed, dev) -> None:
    reporter, spec = c.reporter, c.spec
    try:
        world = spec.resources.gpus if dev.type == "cuda" else 1
        if world > 1:
            reporter.event(f"data-parallel over {world} GPUs (DDP, NCCL); metrics from rank 0")
        result = fit_retrying_oom(spec, reporter.event, device=dev, callbacks=[ReportingCallback(reporter)],
                                  checkpoint_sink=reporter.checkpoint, resume=c.resume, interrupt=reporter.interrupt,
                                  arrays=c.arrays, world=world)
        _outcome(c, result)
    except Exception as exc:  # noqa: BLE001 - a failing job ends failed; the worker goes on
        _failed(c, exc)


def _train_pack(group: list[Claimed], dev, settings: Settings, conclude, pack_reporter, rows: list[int]) -> None:
    """Train claimed jobs as one packed model; each member reports, checkpoints, stops and ends as its own job.
    Jobs that turn out not to pack (a spec changed, an old checkpoint) train one after another instead."""
    from trainq.models.packed import fit_pack
    from trainq.models.packing import PackError, check_pack

    specs = [c.spec for c in group]
    try:
        check_pack(specs)
    except PackError as exc:
        for c in group:
            c.reporter.event(f"not packed ({exc}); training alone", "warning")
            _train_alone(c, dev)
            conclude(c)
        return
    names = ", ".join(c.claim["job_id"][:8] for c in group)
    concluded: set[int] = set()

    def on_done(i: int, member) -> None:  # a member that stopped ends its job now, not when the pack ends
        _outcome(group[i], member.result, member.failed)
        concluded.add(i)
        conclude(group[i])

    # The sweep's pruner is asked for every member at once, at the epochs it decides at (not by each member's
    # reporting callback, one request each): a member it stops ends at that epoch, as it would alone.
    prunes = {i: c.reporter.prune for i, c in enumerate(group) if c.reporter.prune}
    for c in group:
        c.reporter.prune = None
    asking = ServiceClient(settings.service_url, settings.worker_token)  # the training thread's own connection

    def on_validated(pack) -> None:
        asks = []
        for row in range(len(pack.slots)):
            i = pack.slots[row]
            member, prune = pack.members[i], prunes.get(i)
            if (not member.live or prune is None or pack.epoch >= pack.members[i].spec.training.epochs
                    or (prune.get("epochs") is not None and pack.epoch not in prune["epochs"])):
                continue
            value = member.state.metrics.get(prune["metric"])
            if value is not None and math.isfinite(value):
                asks.append((rows[i], pack.epoch, value))
        # In trial order, as the same trials reach the rung one after another unpacked: the same decisions. (Asking
        # best first would promote the best of them, but then a packed sweep would keep other trials than an unpacked
        # one with the same seeds.)
        if asks and not pack_reporter.prune(asking, asks):
            prunes.clear()  # it did not answer: the members run on unpruned, as a trial alone does then

    for c in group:
        c.reporter.event(f"packed with {len(group) - 1} other jobs ({names}): one model, each member as it would "
                         "train alone")
    try:
        fit_pack(specs, device=dev, arrays=group[0].arrays, callbacks=[[ReportingCallback(c.reporter)] for c in group],
                 resumes=[c.resume for c in group], interrupts=[c.reporter.interrupt for c in group],
                 checkpoint_sinks=[c.reporter.checkpoint for c in group],
                 checkpoint_seconds=settings.pack_checkpoint_seconds, on_done=on_done, on_validated=on_validated)
    except Exception as exc:  # noqa: BLE001 - the pack failed as a whole (out of memory, a bad checkpoint)
        for i, c in enumerate(group):
            if i not in concluded:
                _failed(c, exc)
                conclude(c)


def _conclude(client: ServiceClient, c: Claimed, worker: str) -> str:
    """Deliver what is pending, then finish the attempt (or hand it back when the worker is draining)."""
    reporter, attempt_id, token = c.reporter, c.claim["attempt_id"], c.claim["token"]
    reporter.close()
    outcome = c.outcome
    if reporter.fenced:
        return "fenced"
    if reporter.draining and outcome.get("status") == "cancelled" and not reporter.cancelled:
        try:
            client.call("POST", f"/api/v1/worker/attempts/{attempt_id}/release",
                        json={"reason": f"worker {worker} shutting down"}, attempt_token=token, retry_for=20)
        except Fenced:
            return "fenced"
        return "released"
    try:
        client.call("POST", f"/api/v1/worker/attempts/{attempt_id}/finish", json=outcome, attempt_token=token)
    except Fenced:
        return "fenced"
    return outcome["status"]


def free_device_memory(device_type: str | None) -> None:
    """A job's GPU memory goes when it ends: the process stays warm for the next job, its CUDA cache must not.
    (On CPU, reference counting frees a finished job's tensors; a full collection would only cost time.)"""
    if device_type == "cuda":
        import gc

        import torch

        gc.collect()
        torch.cuda.empty_cache()
