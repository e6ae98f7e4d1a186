"""Sweeps through the API: validation with paths, the grid product, launching within `parallel`, cancelling."""

from __future__ import annotations

import itertools

import pytest

from tests.specs import mlp


def sweep(**changes) -> dict:
    body = {"name": "lr-and-width", "base": mlp(epochs=3),
            "search": {"optimizer.lr": {"log_uniform": [1e-4, 1e-1]},
                       "model.layers[0].units": {"choice": [32, 64, 128]}},
            "method": "random", "trials": 6, "parallel": 2, "metric": "val_loss", "pruner": {"type": "asha"},
            "seed": 0}
    body.update(changes)
    return body


def errors_of(answer) -> dict[str, str]:
    assert answer.status_code == 422, answer.get_json()
    return {e["path"]: e["message"] for e in answer.get_json()["errors"]}


def test_a_random_sweep_launches_parallel_trials_with_their_parameters(client):
    answer = client.post("/api/v1/sweeps", json=sweep())
    assert answer.status_code == 201, answer.get_json()
    body = answer.get_json()
    assert body["trials_total"] == 6 and body["trials_launched"] == 2 and body["direction"] == "minimize"
    assert [t["trial"] for t in body["trials"]] == [0, 1]
    for trial in body["trials"]:
        job = client.get(f"/api/v1/jobs/{trial['job_id']}").get_json()
        assert job["status"] == "queued" and job["name"] == f"lr-and-width · trial {trial['trial']}"
        spec = job["spec"]
        assert spec["optimizer"]["lr"] == trial["params"]["optimizer.lr"]
        assert 1e-4 <= spec["optimizer"]["lr"] <= 1e-1
        assert spec["model"]["layers"][0]["units"] == trial["params"]["model.layers[0].units"] in (32, 64, 128)
    assert body["trials"][0]["params"] != body["trials"][1]["params"]
    assert body["budget"] == {"epochs_spent": 0, "epochs_full_search": 18, "fraction": 0.0}
    # The same seed gives the same parameters to the same trial numbers in another sweep.
    again = client.post("/api/v1/sweeps", json=sweep(name="again")).get_json()
    assert [t["params"] for t in again["trials"]] == [t["params"] for t in body["trials"]]


def test_a_grid_over_two_fields_is_exactly_their_product(client):
    answer = client.post("/api/v1/sweeps", json=sweep(
        method="grid", trials=None, parallel=100, pruner={"type": "none"},
        search={"optimizer.lr": {"choice": [0.1, 0.01, 0.001]}, "model.layers[0].units": {"choice": [16, 32]}}))
    assert answer.status_code == 201, answer.get_json()
    body = answer.get_json()
    assert body["trials_total"] == 6 and body["trials_launched"] == 6
    seen = [(t["params"]["optimizer.lr"], t["params"]["model.layers[0].units"]) for t in body["trials"]]
    assert sorted(seen) == sorted(itertools.product([0.1, 0.01, 0.001], [16, 32]))
    assert len(set(seen)) == 6


@pytest.mark.parametrize("search, path, words", [
    ({"optimizer.momentum": {"uniform": [0, 1]}}, "search.optimizer.momentum", "no field"),
    ({"model.layers[7].units": {"choice": [1, 2]}}, "search.model.layers[7].units", "no field"),
    ({"model.layers[0].units": {"uniform": [16, 128]}}, "search.model.layers[0].units", "integer"),
    ({"optimizer.lr": {"choice": ["fast", 0.1]}}, "search.optimizer.lr", "refused"),
    ({"optimizer.lr": {"uniform": [-1.0, 0.1]}}, "search.optimizer.lr", "refused"),
    ({"model": {"choice": [1]}}, "search.model", "not a single value"),
])
def test_a_bad_search_space_is_a_422_naming_the_path(client, search, path, words):
    found = errors_of(client.post("/api/v1/sweeps", json=sweep(search=search)))
    assert path in found and words in found[path], found


def test_a_range_of_the_wrong_type_is_a_422_naming_the_path(client):
    found = errors_of(client.post("/api/v1/sweeps", json=sweep(search={"optimizer.lr": {"log_uniform": ["a", 1]}})))
    assert any(p.startswith("search.optimizer.lr") for p in found), found
    found = errors_of(client.post("/api/v1/sweeps", json=sweep(search={"optimizer.lr": {"log_uniform": [0.1, 0.01]}})))
    assert any(p.startswith("search.optimizer.lr") for p in found), found
    found = errors_of(client.post("/api/v1/sweeps", json=sweep(method="grid", search={"optimizer.lr": {"uniform": [0.1, 0.2]}})))
    assert "search.optimizer.lr" in found and "grid" in found["search.optimizer.lr"]
    found = errors_of(client.post("/api/v1/sweeps", json=sweep(base={**mlp(), "optimizer": {"type": "adam", "lr": -1}})))
    assert "base.optimizer.lr" in found
    found = errors_of(client.post("/api/v1/sweeps", json=sweep(pruner={"type": "magic"})))
    assert any(p.startswith("pruner") for p in found), found
    assert client.get("/api/v1/jobs").get_json()["total"] == 0  # nothing was queued


def test_cancelling_a_sweep_cancels_its_trials_and_other_users_do_not_see_it(client, client_as):
    body = client.post("/api/v1/sweeps", json=sweep()).get_json()
    assert client_as("bob").get(f"/api/v1/sweeps/{body['id']}").status_code == 404
    assert client_as("admin").get(f"/api/v1/sweeps/{body['id']}").status_code == 200
    answer = client.post(f"/api/v1/sweeps/{body['id']}/cancel")
    assert answer.status_code == 200 and answer.get_json()["status"] == "cancelled"
    statuses = [client.get(f"/api/v1/jobs/{t['job_id']}").get_json()["status"] for t in body["trials"]]
    assert statuses == ["cancelled", "cancelled"]
    assert client.post(f"/api/v1/sweeps/{body['id']}/train_best").status_code == 409
    assert [s["id"] for s in client.get("/api/v1/sweeps").get_json()["sweeps"]] == [body["id"]]
    assert client_as("bob").get("/api/v1/sweeps").get_json()["sweeps"] == []


@pytest.mark.parametrize("pruner", ["asha", "hyperband", "median"])
def test_each_pruner_answers_a_trial_s_report(app, client, worker_headers, pruner):
    body = client.post("/api/v1/sweeps", json=sweep(pruner={"type": pruner, "startup_trials": 0,
                                                            "warmup_epochs": 0})).get_json()
    job_id = body["trials"][0]["job_id"]
    claim = app.test_client().post(f"/api/v1/worker/jobs/{job_id}/claim", json={"worker": "w@x"},
                                   headers=worker_headers).get_json()
    assert claim["prune"]["metric"] == "val_loss"
    headers = {**worker_headers, "X-Trainq-Attempt-Token": claim["token"]}
    for epoch in (1, 2, 3):
        answer = app.test_client().post(claim["prune"]["url"], json={"epoch": epoch, "value": 1.0 / epoch},
                                        headers=headers)
        assert answer.status_code == 200 and answer.get_json()["prune"] in (True, False)
    bad = app.test_client().post(claim["prune"]["url"], json={"epoch": "x"}, headers=headers)
    assert bad.status_code == 400
    wrong = app.test_client().post(claim["prune"]["url"], json={"epoch": 1, "value": 1.0},
                                   headers={**worker_headers, "X-Trainq-Attempt-Token": "nope"})
    assert wrong.status_code == 404


def test_a_grid_too_large_to_run_is_a_422_unless_trials_caps_it(client):
    search = {f"model.layers[{i}].units": {"choice": list(range(1, 12))} for i in (0,)}
    search.update({"optimizer.lr": {"choice": [round(0.001 * k, 4) for k in range(1, 101)]},
                   "training.batch_size": {"choice": list(range(1, 12))}})  # 11 x 100 x 11 = 12,100 combinations
    body = sweep(method="grid", trials=None, pruner={"type": "none"}, parallel=1, search=search)
    found = errors_of(client.post("/api/v1/sweeps", json=body))
    assert "12100 combinations" in found["trials"]
    answer = client.post("/api/v1/sweeps", json={**body, "trials": 5})
    assert answer.status_code == 201 and answer.get_json()["trials_total"] == 5


@pytest.mark.parametrize("epochs, factor, given, first", [
    (27, 3, None, 3), (30, 3, None, 3), (100, 3, None, 11), (10, 3, None, 1), (2, 3, None, 1), (100, 4, None, 6),
    (100, 3, 1, 1),  # an explicit min_resource is kept
])
def test_asha_s_first_decision_scales_with_the_trial_s_epochs(epochs, factor, given, first):
    from trainq.models.sweep import PrunerSpec, SweepSpec
    from trainq.service.sweeps import pruner_for

    pruner = PrunerSpec(type="asha", reduction_factor=factor, min_resource=given)
    assert pruner.first_rung(epochs) == first
    spec = SweepSpec.model_validate(sweep(pruner={"type": "asha", "reduction_factor": factor, "min_resource": given}))
    assert pruner_for(spec, epochs)._min_resource == first  # what Optuna is told


def test_the_largest_seed_a_sweep_accepts_starts_its_trials(client):
    """Found by schemathesis' coverage phase: seed 2**31 - 1 made the per-trial sampler seed overflow numpy's 2**32."""
    answer = client.post("/api/v1/sweeps", json=sweep(seed=2**31 - 1, method="tpe"))
    assert answer.status_code == 201, answer.get_json()
    assert len(answer.get_json()["trials"]) == 2
    assert client.post("/api/v1/sweeps", json=sweep(seed=2**31)).status_code == 422


def counting_reads(storage, reads: list):
    """`storage`, with each read of a study's trials noted in `reads`."""
    class Counting:
        def __getattr__(self, attr):
            return getattr(storage, attr)

        def get_all_trials(self, *args, **kwargs):
            reads.append(1)
            return storage.get_all_trials(*args, **kwargs)
    return Counting()


def counting_commits(storage, commits: list) -> None:
    """Note each transaction `storage` commits in `commits`."""
    import sqlalchemy

    sqlalchemy.event.listen(storage.engine, "commit", lambda conn: commits.append(1))


def test_a_requests_storage_gives_the_pruners_decisions_of_the_plain_storage(make_database):
    """A pack's prune asks share one RequestStorage (the study read once, its writes stored together at the end):
    over eight rungs of successive halving with 32 trials, and trials pruned between rungs as their finishes tell
    Optuna, its decisions are the plain RDB storage's one for one and the database holds the same reported values
    and rung marks afterwards; and it reads the trials once a request, not once a decision, and commits once."""
    import random

    import optuna

    from trainq.service.sweeps import RequestStorage

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    storage = optuna.storages.RDBStorage(make_database())
    commits: list = []
    counting_commits(storage, commits)
    for name in ("plain", "request"):
        study = optuna.create_study(study_name=name, storage=storage)
        for _ in range(32):
            study.ask().suggest_float("lr", 1e-4, 1e-1, log=True)
    decided, reads = {}, []
    for name in ("plain", "request"):
        values, out = random.Random(7), []
        for step in range(1, 9):
            store = storage
            if name == "request":
                store = RequestStorage(counting_reads(storage, reads))
            study = optuna.load_study(study_name=name, storage=store,
                                      pruner=optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=2))
            pruned = []
            commits.clear()
            for number in range(32):
                value = values.random()
                trial_id = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, number)
                if study._storage.get_trial(trial_id).state != optuna.trial.TrialState.RUNNING:
                    continue
                trial = optuna.trial.Trial(study, trial_id)
                trial.report(value, step)
                out.append((step, number, bool(trial.should_prune())))
                if out[-1][2]:
                    pruned.append(trial_id)
            if name == "request":
                store.flush()
                assert len(commits) == 2  # the read of its trials, and one transaction for every value and mark
            else:  # a transaction a write: at least one a decision
                assert len(commits) >= sum(at == step for at, *_ in out) > 1
            for trial_id in pruned:
                storage.set_trial_state_values(trial_id, optuna.trial.TrialState.PRUNED)
        decided[name] = out
    assert decided["request"] == decided["plain"]
    assert 20 < sum(p for *_, p in decided["plain"]) < len(decided["plain"])  # it did prune, not everything
    assert len(reads) == 8  # one read of the study's trials per request (rung), not one per decision

    def stored(name: str) -> list:
        study = optuna.load_study(study_name=name, storage=storage)
        return [(t.number, t.state, t.intermediate_values, t.system_attrs) for t in study.get_trials()]
    assert stored("request") == stored("plain")
    assert any(t[3] for t in stored("plain"))  # the rung marks are there to compare


def test_settles_tells_and_asks_through_a_requests_storage_sample_what_the_plain_storage_samples(make_database):
    """`settle` tells finished trials and asks new ones through one RequestStorage per call. Over six calls of TPE
    (whose samples depend on every told value and every running trial) and an enqueued grid point (an ask that
    takes a waiting trial), the parameters asked are the plain storage's, and the study in the database ends the same:
    states, values, parameters. And a call reads the trials once, not once per tell and ask, and stores its tells
    and parameters in one transaction."""
    import random

    import optuna

    from trainq.service.sweeps import RequestStorage

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    storage = optuna.storages.RDBStorage(make_database())
    space = {"lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True),
             "width": optuna.distributions.IntDistribution(8, 128)}
    asked, reads, commits = {}, [], []
    counting_commits(storage, commits)
    for name in ("plain", "request"):
        optuna.create_study(study_name=name, storage=storage)
        values, out, running = random.Random(3), [], []
        for call in range(6):
            commits.clear()
            store = storage
            if name == "request":
                store = RequestStorage(counting_reads(storage, reads))
            study = optuna.load_study(study_name=name, storage=store,
                                      sampler=optuna.samplers.TPESampler(seed=call, n_startup_trials=4))
            for number in running[:3]:  # trials ended since the last call: told, one of them pruned
                if number % 4 == 1:
                    study.tell(number, state=optuna.trial.TrialState.PRUNED)
                else:
                    study.tell(number, values.random())
            running = running[3:]
            if call == 3:
                study.enqueue_trial({"lr": 0.01, "width": 64})
            for _ in range(4):
                trial = study.ask(space)
                running.append(trial.number)
                out.append((trial.number, trial.params))
            if name == "request":
                store.flush()
                # a transaction per new trial (Optuna numbers them under a lock), the study's load and read, one for
                # the tells, values and parameters together (and the enqueued point's two): not one per write
                assert len(commits) <= 4 + 4 + (2 if call == 3 else 0)
        asked[name] = out
    assert asked["request"] == asked["plain"]
    assert {"lr": 0.01, "width": 64} in [params for _, params in asked["plain"]]
    assert len({params["lr"] for _, params in asked["plain"]}) == len(asked["plain"])  # sampled, never repeated

    def ended(name: str) -> list:
        study = optuna.load_study(study_name=name, storage=storage)
        return [(t.number, t.state, t.values, t.params) for t in study.get_trials()]
    assert ended("request") == ended("plain")
    assert len(reads) == 6  # one read of the study's trials per call


def test_a_requests_writes_to_a_trial_another_process_ended_are_dropped_and_the_rest_stored(make_database):
    """A trial can end (its job finished, told by `settle`) while a pack's asks for it are being decided: the batch
    is then refused as a whole, and stored one write at a time, without the ended trial's (Optuna refuses writes to
    a finished trial, a tell included: it stays as the other process left it), never failing the request."""
    import optuna

    from trainq.service.sweeps import RequestStorage

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    storage = optuna.storages.RDBStorage(make_database())
    study = optuna.create_study(study_name="s", storage=storage)
    for _ in range(3):
        study.ask()
    store = RequestStorage(storage)
    kept = optuna.load_study(study_name="s", storage=store)
    ids = [t._trial_id for t in kept.get_trials(deepcopy=False)]
    for n, trial_id in enumerate(ids):
        store.set_trial_intermediate_value(trial_id, 3, 0.5 + n)
        store.set_trial_system_attr(trial_id, "completed_rung_0", 0.5 + n)
    store.set_trial_state_values(ids[1], optuna.trial.TrialState.COMPLETE, [0.25])  # a tell, kept for the flush
    store.set_trial_state_values(ids[2], optuna.trial.TrialState.COMPLETE, [0.75])
    storage.set_trial_state_values(ids[1], optuna.trial.TrialState.PRUNED)  # another process, meanwhile
    store.flush()
    after = optuna.load_study(study_name="s", storage=storage).get_trials()
    assert [t.intermediate_values for t in after] == [{3: 0.5}, {}, {3: 2.5}]
    assert [t.system_attrs.get("completed_rung_0") for t in after] == [0.5, None, 2.5]
    assert [(t.state.name, t.values) for t in after] == [("RUNNING", None), ("PRUNED", None), ("COMPLETE", [0.75])]


@pytest.mark.parametrize("method", ["random", "tpe"])
def test_a_sweeps_trials_draw_like_independent_uniforms(method):
    """Trial n's sampler is seeded from (sweep seed, n). Seeded with neighbouring integers, as it once was, the first
    draws of neighbouring trials were neighbours too (learning rates 0.00056, 0.00059, 0.00057 for trials 0, 1, 2):
    the draws must spread over the range (Kolmogorov-Smirnov) and neighbours be as far apart as independent draws."""
    import numpy as np
    import optuna
    from scipy import stats

    from trainq.models.sweep import SweepSpec
    from trainq.service.sweeps import sampler_for

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = {"x": optuna.distributions.FloatDistribution(0.0, 1.0)}
    for seed in (0, 1, 7):
        spec = SweepSpec.model_validate(sweep(method=method, seed=seed, trials=200))
        draws = np.array([optuna.create_study(sampler=sampler_for(spec, n)).ask(space).params["x"]
                          for n in range(200)])
        assert stats.kstest(draws, "uniform").pvalue > 0.001, (seed, draws[:5])
        # |U - V| of independent uniforms has mean 1/3; neighbouring seeds gave a few thousandths
        assert 0.25 < np.abs(np.diff(draws)).mean() < 0.42, (seed, draws[:5])
        assert abs(np.corrcoef(draws[:-1], draws[1:])[0, 1]) < 0.2
        again = optuna.create_study(sampler=sampler_for(spec, 3)).ask(space).params["x"]
        assert again == draws[3]  # trial n's parameters stay reproducible
    # what a user met: seed 1, a learning rate on a log scale, trials 0, 1 and 2 at 0.00081, 0.00086 and 0.00082
    spec = SweepSpec.model_validate(sweep(method=method, seed=1))
    rates = [optuna.create_study(sampler=sampler_for(spec, n)).ask(
        {"lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)}).params["lr"] for n in range(3)]
    assert max(rates) / min(rates) > 1.5, rates


@pytest.mark.parametrize("warmup", [0, 1, 3])
def test_the_median_pruner_never_prunes_a_trial_within_its_warmup_epochs(warmup):
    """Trials report epochs counted from 1; Optuna counts steps from 0: warmup_epochs: 1 stopped trials after their
    first epoch. A trial far behind the median is now first pruned at the end of epoch warmup_epochs + 1."""
    import optuna

    from trainq.models.sweep import SweepSpec
    from trainq.service.sweeps import pruner_for

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = SweepSpec.model_validate(sweep(pruner={"type": "median", "startup_trials": 1, "warmup_epochs": warmup}))
    study = optuna.create_study(pruner=pruner_for(spec, 10))
    done = study.ask()
    for epoch in range(1, 11):
        done.report(0.1, epoch)
    study.tell(done, 0.1)
    behind = study.ask()
    first = None
    for epoch in range(1, 11):
        behind.report(10.0, epoch)  # far worse than the median at every epoch
        if behind.should_prune():
            first = epoch
            break
    assert first == warmup + 1


@pytest.mark.parametrize("base, says", [
    ({"name": "adding", "dataset": {"name": "adding", "sequence_length": 10, "n_samples": 200},
      "model": {"layers": [{"type": "lstm", "units": 8}, {"type": "dense", "units": 1}]},
      "loss": {"type": "mse"}, "optimizer": {"type": "adam", "lr": 0.01}, "training": {"epochs": 2}},
     "dataset: sequences (steps x features) are not stacked yet"),
    ({**mlp(epochs=2), "optimizer": {"type": "lbfgs"}}, "optimizer.type: lbfgs re-evaluates the loss"),
    (mlp(epochs=2), None),
])
def test_the_sweep_says_why_its_trials_do_not_pack(client, base, says):
    body = sweep(base=base, search={"training.seed": {"choice": [0, 1, 2]}}, pack="auto", parallel=3, trials=3)
    answer = client.post("/api/v1/sweeps", json=body)
    assert answer.status_code == 201, answer.get_json()
    shown = client.get(f"/api/v1/sweeps/{answer.get_json()['id']}").get_json()
    if says is None:
        assert shown["not_packed"] is None and all(t["packed_with"] for t in shown["trials"])
        return
    assert says in shown["not_packed"] and not any(t["packed_with"] for t in shown["trials"])
    events = client.get(f"/api/v1/jobs/{shown['trials'][0]['job_id']}/events").get_json()["events"]
    assert any(e["message"] == f"not packed: {shown['not_packed']}" for e in events), events
