"""Sweeps: a search over a job spec's fields, run as ordinary jobs, with Optuna's samplers and pruners deciding.

trainq's part is turning Optuna trials into jobs, feeding the metrics the trials report to the pruner, and stopping
pruned trials. Optuna keeps its study in its RDB storage in the same PostgreSQL database, in its own schema
`optuna` (its tables carry their own alembic_version, which would clash with ours); on SQLite, in a file beside the
database. Everything else is SQL the service owns: the sweep, and its trials as jobs, so a sweep survives a service
restart and a worker death the way jobs do. `settle` is idempotent and runs after every trial ends and on every
reconciler pass.
"""

from __future__ import annotations

import copy
import json
import logging
import threading
from datetime import datetime
from typing import Any

import numpy as np
import optuna
import sqlalchemy.exc
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from trainq.models.packing import pack_key, pack_size, unpackable
from trainq.models.spec import JobSpec, parse_spec, plan
from trainq.models.sweep import Choice, SweepSpec, apply
from trainq.service import jobs, registry
from trainq.service.db import utcnow
from trainq.service.datasets import resolver
from trainq.service.tables import FINISHED, Job, JobStatus, Metric, Sweep, new_id
from trainq.settings import Settings

log = logging.getLogger(__name__)
optuna.logging.set_verbosity(optuna.logging.WARNING)

ACTIVE = (JobStatus.queued.value, JobStatus.running.value)
TrialState = optuna.trial.TrialState

_storages: dict[str, optuna.storages.RDBStorage] = {}
_storage_lock = threading.Lock()


def storage_url(settings: Settings) -> str:
    url = settings.resolved_database_url
    if url.startswith("sqlite"):
        return f"sqlite:///{(settings.data_dir / 'optuna.sqlite3').resolve()}"
    joiner = "&" if "?" in url else "?"
    return f"{url}{joiner}options=-csearch_path%3Doptuna"


def storage(settings: Settings) -> optuna.storages.RDBStorage:
    """One Optuna storage per process and database (creating one checks its schema: not per request)."""
    url = storage_url(settings)
    with _storage_lock:
        if url not in _storages:
            _storages[url] = optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True})
        return _storages[url]


def study_name(sweep_id: str) -> str:
    return f"trainq-{sweep_id}"


def distributions(spec: SweepSpec) -> dict[str, optuna.distributions.BaseDistribution]:
    D = optuna.distributions
    return {path: D.CategoricalDistribution(d.choice) if isinstance(d, Choice)
            else (D.IntDistribution if d.INTEGER else D.FloatDistribution)(*d.bounds, log=d.LOG)
            for path, d in spec.search.items()}


def sampler_for(spec: SweepSpec, number: int) -> optuna.samplers.BaseSampler:
    """Seeded per trial number: a sampler lives for one request here, so seeding it once per sweep would hand every
    trial the first draw. Trial n of a sweep gets the same parameters whatever the pruner did to earlier trials."""
    # Trial n's seed is a hash of (sweep seed, n): MT19937 seeded with neighbouring integers (seed * 100003 + n, as
    # before) drew neighbouring first values, so TPE's first trials repeated nearly the same settings
    seed = int(np.random.SeedSequence([spec.seed, number]).generate_state(1)[0])
    if spec.method == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(10, max(2, spec.budget // 4)))
    return optuna.samplers.RandomSampler(seed=seed)


def pruner_for(spec: SweepSpec, max_epochs: int) -> optuna.pruners.BasePruner:
    p = spec.pruner
    if p.type == "asha":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=p.first_rung(max_epochs),
                                                      reduction_factor=p.reduction_factor)
    if p.type == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=p.first_rung(max_epochs), max_resource=max_epochs,
                                              reduction_factor=p.reduction_factor)
    if p.type == "median":
        # Optuna counts steps from 0 and prunes once step >= n_warmup_steps; trials report epochs counted from 1, so
        # warmup_epochs: 1 (one epoch never pruned) is n_warmup_steps 2 (a first decision after epoch 2)
        return optuna.pruners.MedianPruner(n_startup_trials=p.startup_trials, n_warmup_steps=p.warmup_epochs + 1)
    return optuna.pruners.NopPruner()


def load_study(settings: Settings, sweep: Sweep, number: int = 0, store=None) -> optuna.Study:
    spec = SweepSpec.model_validate(sweep.spec)
    return optuna.load_study(study_name=study_name(sweep.id), storage=store or storage(settings),
                             sampler=sampler_for(spec, number),
                             pruner=pruner_for(spec, sweep.base["training"]["epochs"]))


class RequestStorage:
    """One request's view of Optuna's RDB storage: a study's trials are read once and kept, and every write (reported
    values, rung marks, new trials, their parameters, tells) goes into the kept trials and to the database, each
    read answering a snapshot as the database would. Two users: a pack's members asking the pruner one after
    another (successive halving reads every trial of the study for each decision, and the RDB storage caches only
    finished ones: a rung of 32 members took 32 reads of 32 running trials, 0.6 s here, one read with this, 0.12 s),
    and `settle`, whose tells each read their trial and whose asks each read every unfinished trial (looking for an
    enqueued one): 32 asks took 0.79 s, 0.36 s of it those reads. Decisions and samples are the plain storage's
    (tested: successive halving over 8 rungs, TPE's asks after tells).

    Writes to the trials it keeps (reported values, rung marks, parameters, attributes, and tells, whose answer no
    caller reads) are kept and stored together by `flush` (the caller's, at the end of its request), before any
    other write and any read this storage does not answer itself: one transaction of a few statements, where each
    write alone was a transaction of three or four queries and a commit (about 3 ms here), two per pruning decision:
    a rung of 32 members spent 0.2 s of its pack's time waiting on them, and 21 tells 0.1 s. A batch the database
    refuses (a value another request stored at the same moment, a trial another process ended) is stored one write
    at a time instead, as without batching: Optuna refuses the ended trial's."""

    def __init__(self, inner: optuna.storages.BaseStorage):
        self._inner = inner
        self._trials: dict[int, list[optuna.trial.FrozenTrial]] = {}
        self._by_id: dict[int, optuna.trial.FrozenTrial] = {}
        self._directions: dict[int, list] = {}
        self._pending: list[tuple[str, tuple]] = []  # (the storage's write method, its arguments)

    def __getattr__(self, name: str):
        if not name.startswith("_"):
            self.flush()  # a read or write this class does not answer: the database sees every write before it
        return getattr(self._inner, name)

    def flush(self) -> None:
        """Store the kept writes, in one transaction where the storage is Optuna's RDB storage."""
        pending, self._pending = self._pending, []
        if not pending:
            return
        inner = self._inner
        engine = getattr(inner, "engine", None)  # Optuna's RDB storage (or what wraps it) on a database we upsert on
        if engine is not None and engine.dialect.name in ("postgresql", "sqlite"):
            from optuna.storages._rdb.storage import _create_scoped_session

            try:
                with _create_scoped_session(inner.scoped_session) as session:
                    for args in _store_together(session, pending):  # the parameters are left to Optuna's helper
                        inner._set_trial_param_without_commit(session, *args)
                    _end_together(session, [args for method, args in pending if method == "set_trial_state_values"])
                return
            except (sqlalchemy.exc.IntegrityError, optuna.exceptions.UpdateFinishedTrialError) as exc:
                log.info("%d Optuna writes stored one by one (%s)", len(pending), type(exc).__name__)
        for method, args in pending:  # what each write alone does (the batch was refused as a whole)
            try:
                getattr(inner, method)(*args)
            except optuna.exceptions.UpdateFinishedTrialError:
                pass  # another process ended the trial meanwhile: it stays as that one left it

    def _defer(self, trial_id: int, method: str, *args) -> bool:
        """Keep a write for `flush` when this storage keeps its trial (else the caller writes it through now)."""
        if trial_id not in self._by_id:
            return False
        self._pending.append((method, args))
        return True

    def _kept(self, study_id: int) -> list[optuna.trial.FrozenTrial]:
        if study_id not in self._trials:
            self._trials[study_id] = self._inner.get_all_trials(study_id, deepcopy=True)
            self._by_id.update({t._trial_id: t for t in self._trials[study_id]})
        return self._trials[study_id]

    @staticmethod
    def _snapshot(t: optuna.trial.FrozenTrial) -> optuna.trial.FrozenTrial:
        c = copy.copy(t)
        c._system_attrs, c.intermediate_values = dict(t._system_attrs), dict(t.intermediate_values)
        c._params, c._distributions, c._user_attrs = dict(t._params), dict(t._distributions), dict(t._user_attrs)
        c._values = list(t._values) if t._values is not None else None
        return c

    def get_study_directions(self, study_id: int):
        if study_id not in self._directions:
            self._directions[study_id] = self._inner.get_study_directions(study_id)
        return self._directions[study_id]

    def get_all_trials(self, study_id: int, deepcopy: bool = True, states=None):
        return [self._snapshot(t) for t in self._kept(study_id) if states is None or t.state in states]

    def get_trial_id_from_study_id_trial_number(self, study_id: int, trial_number: int) -> int:
        for t in self._kept(study_id):
            if t.number == trial_number:
                return t._trial_id
        return self._inner.get_trial_id_from_study_id_trial_number(study_id, trial_number)

    def get_trial(self, trial_id: int) -> optuna.trial.FrozenTrial:
        kept = self._by_id.get(trial_id)
        return self._snapshot(kept) if kept is not None else self._inner.get_trial(trial_id)

    def get_trial_system_attrs(self, trial_id: int) -> dict:
        kept = self._by_id.get(trial_id)
        return dict(kept._system_attrs) if kept is not None else self._inner.get_trial_system_attrs(trial_id)

    def set_trial_intermediate_value(self, trial_id: int, step: int, value: float) -> None:
        if not self._defer(trial_id, "set_trial_intermediate_value", trial_id, step, value):
            self._inner.set_trial_intermediate_value(trial_id, step, value)
        if trial_id in self._by_id:
            self._by_id[trial_id].intermediate_values[step] = value

    def set_trial_system_attr(self, trial_id: int, key: str, value) -> None:
        if not self._defer(trial_id, "set_trial_system_attr", trial_id, key, value):
            self._inner.set_trial_system_attr(trial_id, key, value)
        if trial_id in self._by_id:
            self._by_id[trial_id]._system_attrs[key] = value

    def set_trial_user_attr(self, trial_id: int, key: str, value) -> None:
        if not self._defer(trial_id, "set_trial_user_attr", trial_id, key, value):
            self._inner.set_trial_user_attr(trial_id, key, value)
        if trial_id in self._by_id:
            self._by_id[trial_id]._user_attrs[key] = value

    def create_new_trial(self, study_id: int, template_trial: optuna.trial.FrozenTrial | None = None) -> int:
        if study_id not in self._trials:
            return self._inner.create_new_trial(study_id, template_trial)
        # kept: the new trial as the database made it (its number, its start), as Optuna's RDB storage returns it
        # (reading it back took a third of a sweep's first settle)
        made = getattr(self._inner, "_create_new_trial", None)
        trial = made(study_id, template_trial) if made else \
            self._inner.get_trial(self._inner.create_new_trial(study_id, template_trial))
        self._keep(trial, study_id)
        return trial._trial_id

    def set_trial_param(self, trial_id: int, name: str, internal: float, distribution) -> None:
        if not self._defer(trial_id, "set_trial_param", trial_id, name, internal, distribution):
            self._inner.set_trial_param(trial_id, name, internal, distribution)
        kept = self._by_id.get(trial_id)
        if kept is not None:
            kept._params[name] = distribution.to_external_repr(internal)
            kept._distributions[name] = distribution

    def set_trial_state_values(self, trial_id: int, state: TrialState, values=None) -> bool:
        kept = self._by_id.get(trial_id)
        if state.is_finished() and kept is not None and kept.state == TrialState.RUNNING:
            # a tell: kept for the flush too (callers ignore the answer; a trial another process ended meanwhile
            # stays as that one left it, which is what the write alone would do: refused)
            self._pending.append(("set_trial_state_values", (trial_id, state, values)))
            changed = True
        else:
            self.flush()
            changed = self._inner.set_trial_state_values(trial_id, state, values)
        if kept is None:
            return changed
        if not changed:  # another process moved it first (a waiting trial taken): what the database says now
            self._keep(self._inner.get_trial(trial_id))
            return changed
        now = datetime.now()  # the database's own clock set these; no sampler or pruner here reads them
        kept.state = state
        if values is not None:
            kept._values = [float(v) for v in values]
        if state == TrialState.RUNNING:
            kept._datetime_start = now
        if state.is_finished():
            kept.datetime_complete = now
        return changed

    def _keep(self, trial: optuna.trial.FrozenTrial, study_id: int | None = None) -> None:
        old = self._by_id.get(trial._trial_id)
        self._by_id[trial._trial_id] = trial
        if old is not None:
            for kept in self._trials.values():
                for i, t in enumerate(kept):
                    if t is old:
                        kept[i] = trial
        elif study_id is not None:
            self._trials[study_id].append(trial)


def _rdb_models():
    from optuna.storages._rdb import models

    return models


def _end_together(session, ends: list[tuple]) -> None:
    """Tells (trial id, finished state, values) in one transaction: the trials and their values read in two
    queries (the trials locked), each then changed as Optuna's own set_trial_state_values does (its values, its
    state, its completion time)."""
    if not ends:
        return
    models = _rdb_models()
    ids = {trial_id for trial_id, _, _ in ends}
    trials = {t.trial_id: t for t in session.query(models.TrialModel).filter(
        models.TrialModel.trial_id.in_(ids)).with_for_update()}
    stored = {(v.trial_id, v.objective): v for v in session.query(models.TrialValueModel).filter(
        models.TrialValueModel.trial_id.in_(ids))}
    for trial_id, state, values in ends:
        trial = trials.get(trial_id)
        if trial is None or trial.state.is_finished():
            raise optuna.exceptions.UpdateFinishedTrialError(f"trial {trial_id} ended meanwhile")
        for objective, value in enumerate(values or []):
            number, kind = models.TrialValueModel.value_to_stored_repr(value)
            row = stored.get((trial_id, objective))
            if row is None:
                session.add(models.TrialValueModel(trial_id=trial_id, objective=objective, value=number,
                                                   value_type=kind))
            else:
                row.value, row.value_type = number, kind
        trial.state, trial.datetime_complete = state, datetime.now()


def _store_together(session, pending: list[tuple[str, tuple]]) -> list[tuple]:
    """Store the reported values and attributes among `pending` in one upsert each, their trials' states checked in
    one query (what Optuna's own writes check one write at a time, in three or four queries each); return the
    parameters' arguments, left to Optuna's own helper (it checks each against the study's earlier distributions)."""
    from sqlalchemy.dialects import postgresql, sqlite

    upsert = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}[session.get_bind().dialect.name]
    models = _rdb_models()
    attr_models = {"set_trial_system_attr": models.TrialSystemAttributeModel,
                   "set_trial_user_attr": models.TrialUserAttributeModel}
    values, attrs, params = {}, {}, []
    for method, args in pending:  # the last write of a key wins, as one after another
        if method == "set_trial_intermediate_value":
            values[args[:2]] = args[2]
        elif method in attr_models:
            attrs[(attr_models[method], *args[:2])] = args[2]
        elif method == "set_trial_param":
            params.append(args)
    trials = {trial_id for trial_id, _ in values} | {trial_id for _, trial_id, _ in attrs}
    if not trials:
        return params
    states = dict(session.execute(select(models.TrialModel.trial_id, models.TrialModel.state)
                                  .where(models.TrialModel.trial_id.in_(trials))).all())
    if len(states) < len(trials) or any(state.is_finished() for state in states.values()):
        raise optuna.exceptions.UpdateFinishedTrialError("a trial ended meanwhile")  # stored one by one instead
    if values:
        stored = models.TrialIntermediateValueModel
        rows = [dict(zip(("trial_id", "step", "intermediate_value", "intermediate_value_type"),
                         (trial_id, step, *stored.intermediate_value_to_stored_repr(value))))
                for (trial_id, step), value in values.items()]
        statement = upsert(stored).values(rows)
        session.execute(statement.on_conflict_do_update(
            index_elements=[stored.trial_id, stored.step],
            set_={"intermediate_value": statement.excluded.intermediate_value,
                  "intermediate_value_type": statement.excluded.intermediate_value_type}))
    for model in {model for model, _, _ in attrs}:
        rows = [{"trial_id": trial_id, "key": key, "value_json": json.dumps(value)}
                for (m, trial_id, key), value in attrs.items() if m is model]
        statement = upsert(model).values(rows)
        session.execute(statement.on_conflict_do_update(index_elements=[model.trial_id, model.key],
                                                        set_={"value_json": statement.excluded.value_json}))
    return params


def create(session: Session, settings: Settings, spec: SweepSpec, base: dict, owner_id: str | None) -> Sweep:
    sweep = Sweep(owner_id=owner_id, name=spec.name, project=base.get("project") or "default",
                  spec=spec.model_dump(mode="json"), base=base,
                  budget=spec.budget, launched=0)
    session.add(sweep)
    session.flush()
    optuna.create_study(study_name=study_name(sweep.id), storage=storage(settings),
                        direction=spec.resolved_direction)
    return sweep


def _locked(session: Session, sweep_id: str) -> Sweep | None:
    """The sweep row, locked for this transaction on PostgreSQL: one settle at a time per sweep."""
    query = select(Sweep).where(Sweep.id == sweep_id)
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update()
    return session.scalars(query.execution_options(populate_existing=True)).first()


def trial_value(session: Session, job: Job, metric: str, direction: str) -> float | None:
    """A trial's objective: the best value of the sweep's metric over the epochs it reported."""
    best = func.max if direction == "maximize" else func.min
    return session.scalar(select(best(Metric.value)).where(Metric.job_id == job.id, Metric.name == metric))


def settle(session: Session, settings: Settings, sweep_id: str) -> list[Job]:
    """Tell Optuna about trials that ended, keep the best, launch trials up to `parallel` within the budget, and end
    the sweep when every trial has. Return the jobs it created (the caller commits, then enqueues them)."""
    sweep = _locked(session, sweep_id)
    if sweep is None or sweep.status != "running":
        return []
    spec = SweepSpec.model_validate(sweep.spec)
    direction = spec.resolved_direction
    trials = session.scalars(select(Job).where(Job.sweep_id == sweep.id).order_by(Job.trial)).all()
    study = load_study(settings, sweep, sweep.launched, store=RequestStorage(storage(settings)))
    known = {t.number: t for t in study.get_trials(deepcopy=False)}
    for job in trials:
        frozen = known.get(job.trial)
        if job.status not in FINISHED or frozen is None or frozen.state != TrialState.RUNNING:
            continue
        value = trial_value(session, job, spec.metric, direction)
        if job.status == JobStatus.succeeded.value and value is not None:
            study.tell(job.trial, value)
        elif job.status == JobStatus.pruned.value:
            study.tell(job.trial, state=TrialState.PRUNED)
        else:
            study.tell(job.trial, state=TrialState.FAIL)
        if job.status == JobStatus.succeeded.value and value is not None and (
                sweep.best_value is None or (value > sweep.best_value if direction == "maximize"
                                             else value < sweep.best_value)):
            sweep.best_job_id, sweep.best_value = job.id, value
    active = sum(job.status in ACTIVE for job in trials)
    created: list[Job] = []
    specs: dict[str, JobSpec] = {}
    asked: dict[str, dict[str, Any]] = {}
    grid = spec.grid() if spec.method == "grid" else None
    while active < spec.parallel and sweep.launched < sweep.budget:
        number = sweep.launched
        study.sampler = sampler_for(spec, number)
        if grid is not None:
            study.enqueue_trial(grid[number], skip_if_exists=False)
        trial = study.ask(distributions(spec))
        job, job_spec = _trial_job(session, sweep, trial.number, trial.params)
        created.append(job)
        specs[job.id], asked[job.id] = job_spec, trial.params
        sweep.launched += 1
        active += 1
    study._storage.flush()
    packed = pack_trials(spec, created, specs)
    jobs.submit_many(session, created)  # one INSERT for the trials launched together, not one each
    for job in created:
        jobs.add_event(session, job.id, f"trial {job.trial} of sweep {sweep.name}: "
                       + ", ".join(f"{k}={v}" for k, v in asked[job.id].items()))
        if job.id in packed:
            jobs.add_event(session, job.id, packed[job.id])
    if sweep.launched >= sweep.budget and active == 0:
        sweep.status, sweep.finished_at = "succeeded" if sweep.best_job_id else "failed", utcnow()
        log.info("sweep %s ended: best %s = %s", sweep.id, sweep.best_job_id, sweep.best_value)
        if spec.register_best and sweep.best_job_id:
            registry.register_finished(session, session.get(Job, sweep.best_job_id), spec.register_best)
    session.flush()
    return created


def pack_trials(spec: SweepSpec, created: list[Job], specs: dict[str, JobSpec]) -> dict[str, str]:
    """Group trials launched together whose specs differ only in packable fields into packs (one pack_id each),
    as large as `pack` allows: auto packs where packing was measured to pay (trainq.models.packing), a number at
    most that many, off none. A pack's trials are sent to one worker at once and train as one model. Return each
    packed trial's event saying so."""
    if spec.pack == "off" or len(created) < 2:
        return {}
    groups: dict[str, list[Job]] = {}
    said: dict[str, str] = {}
    for job in created:
        reason = unpackable(specs[job.id])
        if reason is None:
            groups.setdefault(pack_key(specs[job.id]), []).append(job)
        else:
            said[job.id] = f"not packed: {reason}"
    for members in groups.values():
        first = specs[members[0].id]
        device = "cuda" if first.resources.device == "gpu" else "cpu"  # any: a CPU worker may take it
        size = spec.pack if isinstance(spec.pack, int) else pack_size(first, device)
        for start in range(0, len(members), max(1, size)):
            chunk = members[start:start + size]
            if len(chunk) < 2:
                continue
            pack_id = new_id()
            numbers = ", ".join(str(j.trial) for j in chunk)
            for job in chunk:
                job.pack_id = pack_id
                said[job.id] = f"packed with trials {numbers}: they train together as one model, each as it would alone"
    return said


def _trial_job(session: Session, sweep: Sweep, number: int, params: dict[str, Any]) -> tuple[Job, JobSpec]:
    """Trial `number` as a job, not yet stored (settle stores the trials it launches together)."""
    document = apply(sweep.base, params)
    document["name"] = f"{sweep.name} · trial {number}"[:200]
    document.pop("register_as", None)  # each trial is not a model: the sweep registers its best (register_best)
    job_spec = parse_spec(document, uploads=resolver(session, sweep.owner_id))
    dataset_id = job_spec.dataset.uploaded.id if job_spec.dataset.uploaded is not None else None
    job = jobs.new_job(job_spec, plan(job_spec), owner_id=sweep.owner_id, dataset_id=dataset_id,
                       sweep_id=sweep.id, trial=number)
    return job, job_spec


def decision_epochs(sweep: Sweep) -> list[int] | None:
    """The epochs at which the sweep's pruner can stop a trial (None: any). Successive halving and Hyperband decide
    only at their rungs, first_rung * reduction_factor^k, and read only the value reported there: a trial that asks
    at those epochs alone is pruned exactly when asking every epoch would prune it, for a few requests, not one an
    epoch (a pack of 32 trials asking each epoch spent most of its time waiting on the pruner)."""
    spec = SweepSpec.model_validate(sweep.spec)
    if spec.pruner.type not in ("asha", "hyperband"):
        return None
    epochs, rung, out = sweep.base["training"]["epochs"], spec.pruner.first_rung(sweep.base["training"]["epochs"]), []
    while rung < epochs:
        out.append(rung)
        rung *= spec.pruner.reduction_factor
    return out


def should_prune(session: Session, settings: Settings, job: Job, epoch: int, value: float,
                 studies: dict[str, optuna.Study] | None = None) -> bool:
    """Report a trial's metric at an epoch to its pruner; True if the trial should stop now. `studies` keeps the
    loaded studies across calls (a pack's members asking in one request: loading the study costs queries each);
    the caller then stores their reports with `flush(studies)`, in one transaction."""
    sweep = session.get(Sweep, job.sweep_id)
    if sweep is None or sweep.status != "running" or job.trial is None:
        return False
    if studies is not None and sweep.id in studies:
        study = studies[sweep.id]
    elif studies is not None:  # the study's trials read once for the request's asks (RequestStorage)
        study = studies[sweep.id] = load_study(settings, sweep, store=RequestStorage(storage(settings)))
    else:
        study = load_study(settings, sweep)
    trial_id = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, job.trial)
    if study._storage.get_trial(trial_id).state != TrialState.RUNNING:
        return False
    trial = optuna.trial.Trial(study, trial_id)
    trial.report(value, epoch)
    return bool(trial.should_prune())  # some pruners answer numpy.bool_


def flush(studies: dict[str, optuna.Study]) -> None:
    """Store what `should_prune` kept of one request's asks (its RequestStorage's writes), before the request ends."""
    for study in studies.values():
        study._storage.flush()


def cancel(session: Session, sweep: Sweep) -> Sweep:
    """Cancel a sweep: no trial is launched any more, and its queued and running trials are cancelled."""
    if sweep.status != "running":
        return sweep
    sweep.status, sweep.finished_at = "cancelled", utcnow()
    for job in session.scalars(select(Job).where(Job.sweep_id == sweep.id, Job.status.in_(ACTIVE))):
        jobs.cancel(session, job)
    return sweep


def running_sweeps(session: Session) -> list[str]:
    return list(session.scalars(select(Sweep.id).where(Sweep.status == "running")))


def _not_packed(spec: SweepSpec, trials: list[Job]) -> str | None:
    """Why this sweep's trials do not pack, read from its first trial's spec (the searched fields may be what decides,
    so the base alone would not do); None when they can, or packing is off."""
    if spec.pack == "off" or not trials:
        return None
    try:
        return unpackable(JobSpec.model_validate(trials[0].spec))
    except Exception:  # noqa: BLE001 - a spec this version cannot read again (an older one's): no reason to show
        return None


def summary(session: Session, sweep: Sweep) -> dict[str, Any]:
    """The sweep as the API shows it: trials with parameters, status and metric; the best; the budget spent."""
    from trainq.models.sweep import get_path

    spec = SweepSpec.model_validate(sweep.spec)
    direction = spec.resolved_direction
    trials = session.scalars(select(Job).where(Job.sweep_id == sweep.id).order_by(Job.trial)).all()
    best = func.max if direction == "maximize" else func.min
    values = dict(session.execute(select(Metric.job_id, best(Metric.value)).where(
        Metric.job_id.in_([t.id for t in trials]), Metric.name == spec.metric).group_by(Metric.job_id)).all()) \
        if trials else {}
    epochs = sweep.base["training"]["epochs"]
    packs: dict[str, list[int]] = {}
    for t in trials:
        if t.pack_id:
            packs.setdefault(t.pack_id, []).append(t.trial)
    not_packed = _not_packed(spec, trials)
    rows = [{"trial": t.trial, "job_id": t.id, "status": t.status, "stop_reason": t.stop_reason,
             "packed_with": [n for n in packs.get(t.pack_id, []) if n != t.trial] if t.pack_id else [],
             "params": {p: get_path(t.spec, p) for p in spec.search}, "value": values.get(t.id),
             "epochs": t.epoch, "test_accuracy": (t.metrics or {}).get("test_accuracy")} for t in trials]
    spent = sum(t.epoch for t in trials)
    best_row = next((r for r in rows if r["job_id"] == sweep.best_job_id), None)
    reached = None  # the best value any trial reached at any epoch, pruned or not: a pruned trial can pass the best
    if trials:
        order = Metric.value.desc() if direction == "maximize" else Metric.value.asc()
        top = session.execute(select(Metric.job_id, Metric.value, Metric.epoch).where(
            Metric.job_id.in_([t.id for t in trials]), Metric.name == spec.metric).order_by(order).limit(1)).first()
        if top is not None:
            trial = next(t for t in trials if t.id == top.job_id)
            reached = {"trial": trial.trial, "job_id": trial.id, "status": trial.status, "value": top.value,
                       "epoch": top.epoch}
    counts: dict[str, int] = {}
    for t in trials:
        counts[t.status] = counts.get(t.status, 0) + 1
    return {
        "id": sweep.id, "name": sweep.name, "project": sweep.project, "status": sweep.status, "method": spec.method,
        "metric": spec.metric, "direction": direction, "pruner": spec.pruner.type,
        "trials_total": sweep.budget, "trials_launched": sweep.launched, "parallel": spec.parallel,
        "counts": counts, "created_at": sweep.created_at.isoformat(), "pack": spec.pack,
        "not_packed": not_packed,  # why its trials cannot pack (a sequence model, L-BFGS, ...), None if they can
        "finished_at": sweep.finished_at.isoformat() if sweep.finished_at else None,
        "search": {k: v.model_dump() for k, v in spec.search.items()},
        "budget": {"epochs_spent": spent, "epochs_full_search": sweep.budget * epochs,
                   "fraction": spent / (sweep.budget * epochs) if sweep.budget else 0.0},
        # the best completed trial (what train_best and register_best take); `highest_reached` may be a pruned one's
        "best": None if best_row is None else {**best_row, "spec": next(t.spec for t in trials
                                                                       if t.id == sweep.best_job_id)},
        "highest_reached": reached,
        "trials": rows,
        "spec": sweep.spec,
    }
