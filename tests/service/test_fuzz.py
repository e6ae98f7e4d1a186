"""Property tests: any JSON either validates or gets a 4xx listing paths; schemathesis against our OpenAPI."""

from __future__ import annotations

import json

import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from schemathesis.specs.openapi.checks import positive_data_acceptance

from tests.specs import mlp, xor
from trainq.models.spec import SpecError, parse_spec

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=30,
)


def mutations(base: dict):
    """Specs near a valid one: one field (at any depth) replaced by an arbitrary JSON value."""
    paths = []

    def walk(node, path):
        if isinstance(node, dict):
            for key, value in node.items():
                paths.append(path + (key,))
                walk(value, path + (key,))
        elif isinstance(node, list):
            for i, value in enumerate(node):
                paths.append(path + (i,))
                walk(value, path + (i,))

    walk(base, ())

    @st.composite
    def mutate(draw):
        spec = json.loads(json.dumps(base))
        path = draw(st.sampled_from(paths))
        node = spec
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = draw(json_values)
        return spec
    return mutate()


@settings(max_examples=300, deadline=None)
@given(st.one_of(json_values, mutations(mlp()), mutations(xor())))
def test_any_json_validates_or_lists_paths(data):
    try:
        parse_spec(data)
    except SpecError as exc:
        assert exc.errors
        for error in exc.errors:
            assert isinstance(error.path, str) and error.path
            assert isinstance(error.message, str) and error.message


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(json_values, mutations(mlp())))
def test_the_api_answers_any_json_with_2xx_or_4xx(client, data):
    answer = client.post("/api/v1/jobs:validate", data=json.dumps(data, allow_nan=True))
    assert answer.status_code in (200, 400, 422), answer.json
    if answer.status_code == 422:
        assert all(e["path"] and e["message"] for e in answer.json["errors"])


def test_openapi_conformance_and_no_5xx(app, tokens):
    """Every operation of our own OpenAPI document, fuzzed by schemathesis: no 5xx, answers match the document."""
    app.extensions["trainq"].settings.submit_per_minute = 100_000
    schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", app)
    headers = {"Authorization": f"Bearer {tokens['admin']}"}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 15
    for operation in operations:
        @settings(max_examples=15, deadline=None, database=None, derandomize=True,  # reproducible in CI
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
        @given(operation.as_strategy())
        def check(case):
            # A schema-valid spec may still be unrunnable (a shape that does not fit): that 422 is by design,
            # so the "positive data acceptance" check does not apply. Every other check does.
            case.call_and_validate(headers=headers, excluded_checks=[positive_data_acceptance])

        check()


def seed_one_of_everything(app, client, worker_headers) -> dict:
    """A registered worker, a sweep with its first trials, and (the newest job) a running job with a checkpoint."""
    from tests.service.test_api import _checkpoint_blob, attempt_headers, claim, submit
    from tests.service.test_sweeps import sweep
    from tests.service.test_workers import beat

    app.extensions["trainq"].settings.submit_per_minute = 100_000
    assert beat(app, "fuzz@host", worker_headers).status_code == 200
    made = client.post("/api/v1/sweeps", json=sweep())
    assert made.status_code == 201
    job = submit(client)
    claimed = claim(client, job["id"], worker_headers).json
    stored = client.post(f"/api/v1/worker/attempts/{claimed['attempt_id']}/checkpoints",
                         data=_checkpoint_blob()[0], headers=attempt_headers(worker_headers, claimed))
    assert stored.status_code == 201
    return {"job_id": job["id"], "sweep_id": made.get_json()["id"]}


def test_every_link_of_the_document_leads_from_a_real_answer_to_the_object(app, client, tokens, worker_headers):
    """Each link, followed as a client would: call its operation, read the id where the link points, call the target
    with it. The target must find the object (no 404) and answer without a server error."""
    from tests.service.test_sweeps import sweep

    seeded = seed_one_of_everything(app, client, worker_headers)
    doc = client.get("/api/v1/openapi.json").get_json()
    by_id = {op["operationId"]: (method, path) for path, ops in doc["paths"].items() for method, op in ops.items()}
    bodies = {"post /api/v1/jobs": mlp(), "post /api/v1/sweeps": sweep(), "post /api/v1/tokens": {"label": "link"}}
    followed = 0
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            for status, response in op["responses"].items():
                for name, link in response.get("links", {}).items():
                    source = client.open(path.format(**seeded), method=method.upper(),
                                         json=bodies.get(f"{method} {path}"))
                    if str(source.status_code) != status:
                        continue  # train_best before a trial has finished: nothing to follow yet
                    values = {}
                    for parameter, expression in link["parameters"].items():
                        node = source.get_json()
                        for key in expression.split("#/", 1)[1].split("/"):
                            node = node[int(key)] if isinstance(node, list) else node[key]
                        values[parameter] = node
                    target_method, target_path = by_id[link["operationId"]]
                    answer = client.open(target_path.format(**values), method=target_method.upper())
                    assert answer.status_code != 404 and answer.status_code < 500, (name, values, answer.get_json())
                    followed += 1
    assert followed >= 30  # every link of every source that answered


def test_stateful_sequences_follow_the_links_with_no_server_error(app, client, tokens, worker_headers):
    """Schemathesis' stateful phase: sequences of calls that follow the document's links from answers that carry ids
    to the routes that take them. Every answer must conform to the document and none may be a 5xx (schemathesis'
    checks); and the sequences must reach the id routes with real ids, which stateless fuzzing never does."""
    from collections import Counter

    seed_one_of_everything(app, client, worker_headers)
    schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", app)
    # Valid data only: the stateless test above sends the invalid kind; here what matters is the sequences, and
    # invalid draws that depend on earlier answers make Hypothesis call its own generation flaky
    schema.config.generation.update(modes=[schemathesis.GenerationMode.POSITIVE])
    answered: Counter = Counter()
    headers = {}

    connection = app.extensions["trainq"].sessions.kw["bind"]  # the test's connection, all sessions joined to it
    scenario = {}

    class Stateful(schema.as_state_machine()):
        def setup(self):
            # Each scenario starts from the seeded database and its changes are rolled back after it: Hypothesis
            # replays choice prefixes it has seen, and a prefix must draw the same steps each time (on a database
            # that had moved on, it once drew fewer and Hypothesis called its own generation flaky)
            scenario["savepoint"] = connection.begin_nested()
            # A token of its own for each scenario: GET /tokens -> DELETE /tokens/{id} is a sequence the links allow,
            # and it revokes the oldest token (the fixture's), never this newer one
            from sqlalchemy import select

            from trainq.service.auth import create_token
            from trainq.service.tables import User

            with app.extensions["trainq"].sessions() as session:
                admin = session.scalar(select(User).where(User.name == "admin"))
                headers["Authorization"] = f"Bearer {create_token(session, admin, 'fuzz scenario')}"
                session.commit()

        def teardown(self):
            scenario.pop("savepoint").rollback()
            super().teardown()

        def before_call(self, case):
            case.headers = {**(case.headers or {}), **headers}  # over the bearer token the schema makes it generate

        def validate_response(self, response, case, additional_checks=None, **kwargs):
            if response.status_code < 300 and case.path_parameters:
                answered[f"{case.operation.method.upper()} {case.operation.path}"] += 1
            case.validate_response(response, headers=headers, excluded_checks=[positive_data_acceptance])

    # No shrinking: a failing sequence's later steps depend on ids the service made, which a replay does not remake
    Stateful.run(settings=settings(max_examples=150, stateful_step_count=6, deadline=None, database=None,
                                   derandomize=True,  # the same sequences in every run: reproducible in CI
                                   phases=[Phase.generate], suppress_health_check=list(HealthCheck)))
    # id routes answered 2xx: the sequences carried real ids there (which of them varies with the exploration)
    assert len(answered) >= 6, answered
