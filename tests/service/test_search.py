"""Runs a team organises and searches: projects, tags and notes through the API, and MLflow's filter language,
read as MLflow's documentation writes it (and refusing what it refuses), run in SQL on real PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy import select, update

from tests.specs import mlp, with_
from trainq.service.search import SearchError, parse_filter, parse_order_by
from trainq.service.tables import AuditEntry, Job, Metric

# -- the language, case by case ---------------------------------------------------------------------------------------

# Each filter from MLflow's "Search Runs" documentation (and its search_utils), with what MLflow makes of it.
ACCEPTED = [
    ("metrics.accuracy > 0.92", [("metric", "accuracy", ">", 0.92)]),
    ('params.model = "LogisticRegression" and params.lambda = "0.001" and metrics.error <= 0.05',
     [("param", "model", "=", "LogisticRegression"), ("param", "lambda", "=", "0.001"),
      ("metric", "error", "<=", 0.05)]),
    ('attributes.status = "FAILED"', [("attribute", "status", "=", "FAILED")]),
    ("metrics.`f1 score` >= 0.5", [("metric", "f1 score", ">=", 0.5)]),
    ('metrics."f1 score" != 0', [("metric", "f1 score", "!=", 0)]),
    ("tags.`mlflow.source.type` = 'LOCAL'", [("tag", "mlflow.source.type", "=", "LOCAL")]),
    ("attributes.run_id IN ('a1', 'b2')", [("attribute", "run_id", "IN", ("a1", "b2"))]),
    ("attributes.run_id NOT IN ('a1')", [("attribute", "run_id", "NOT IN", ("a1",))]),
    ("attributes.start_time > 1700000000000", [("attribute", "start_time", ">", 1700000000000)]),
    ("attributes.created < 1700000000000.5", [("attribute", "created", "<", 1700000000000.5)]),
    ("tags.team IS NULL AND params.model IS NOT NULL",
     [("tag", "team", "IS NULL", None), ("param", "model", "IS NOT NULL", None)]),
    ("params.model LIKE 'GPT%' and tags.team ILIKE '%VIS%'",
     [("param", "model", "LIKE", "GPT%"), ("tag", "team", "ILIKE", "%VIS%")]),
    ("run_name = 'baseline'", [("attribute", "run_name", "=", "baseline")]),  # a bare key is an attribute
    ("metric.loss < 1 and param.seed = '3' and tag.a = 'b' and attribute.status != 'KILLED' and run.run_id = 'x'",
     [("metric", "loss", "<", 1), ("param", "seed", "=", "3"), ("tag", "a", "=", "b"),
      ("attribute", "status", "!=", "KILLED"), ("attribute", "run_id", "=", "x")]),
    ("metrics.loss<1e-2", [("metric", "loss", "<", 0.01)]),
    ("", []),
]

# Filters MLflow refuses, with where reading stops (0-based) and words of the reason.
REFUSED = [
    ("metrics.accuracy > '0.9'", 19, "number"),  # a metric compares with a number
    ("params.model = LogisticRegression", 15, "value"),  # a string value must be quoted
    ("metrics.a > 1 or metrics.b > 2", 14, "OR is not supported"),
    ("metrics.acc LIKE '0.9%'", 12, "not LIKE"),
    ("attributes.status > 'x'", 18, "not >"),
    ("attributes.artifact_uri = 'x'", 0, "unknown attribute"),
    ("foo.bar = 'x'", 0, "unknown entity type"),
    ("metrics.acc > 0.9 and", 21, "expected an identifier"),
    ("metrics.acc > 0.9 metrics.b > 1", 18, "expected AND"),
    ("attributes.start_time = 'yesterday'", 24, "number"),
    ("attributes.status IS NULL", 18, "tags and params"),
    ("tags.team = 'a' and (metrics.x > 1)", 20, "expected an identifier"),
    ("metrics.x >", 11, "expected a value"),
    ("metrics.x ~ 1", 10, "cannot read"),
    ("attempt = 'x'", 0, "unknown attribute"),  # a bare key is an attribute, and must be one
]

# Where trainq reads more than MLflow, on purpose (the README says so): a spec keeps numbers, and lists are general.
EXTENDED = [
    ("params.optimizer.lr < 0.01", [("param", "optimizer.lr", "<", 0.01)]),
    ("tags.team IN ('vision', 'nlp')", [("tag", "team", "IN", ("vision", "nlp"))]),
]


def flat(found):
    return [(c.key.type, c.key.name, c.op, c.value) for c in found]


@pytest.mark.parametrize("text,expected", ACCEPTED + EXTENDED)
def test_a_filter_from_mlflow_s_documentation_reads_as_mlflow_reads_it(text, expected):
    assert flat(parse_filter(text)) == expected


@pytest.mark.parametrize("text,position,reason", REFUSED)
def test_a_filter_mlflow_refuses_is_refused_at_its_position(text, position, reason):
    with pytest.raises(SearchError) as refused:
        parse_filter(text)
    assert refused.value.position == position and reason in str(refused.value), str(refused.value)


def test_order_by_reads_keys_and_directions():
    found = parse_order_by("metrics.val_loss ASC, params.optimizer.lr DESC, attributes.start_time")
    assert [(o.key.type, o.key.name, o.descending) for o in found] == [
        ("metric", "val_loss", False), ("param", "optimizer.lr", True), ("attribute", "start_time", False)]
    with pytest.raises(SearchError) as refused:
        parse_order_by("metrics.val_loss UP")
    assert refused.value.position == 17
    with pytest.raises(SearchError) as refused:  # found by the stateful fuzzer: a bare unknown key was a 500
        parse_order_by("attempt")
    assert refused.value.position == 0 and "unknown attribute" in str(refused.value)


# -- through the API, in SQL --------------------------------------------------------------------------------------------


def submit(client, **fields) -> str:
    answer = client.post("/api/v1/jobs", json=with_(mlp(), **fields))
    assert answer.status_code == 201, answer.json
    return answer.json["id"]


def finish(app, job_id, status="succeeded", **metrics):
    with app.extensions["trainq"].sessions() as session:
        session.execute(update(Job).where(Job.id == job_id).values(status=status, metrics=metrics))
        session.commit()


@pytest.fixture()
def runs(app, client):
    """Five of alice's runs over two projects: lrs, tags and final metrics that each filter below cuts apart."""
    made = {
        "a": submit(client, name="a", project="churn", tags={"team": "vision", "size": 3}, **{"optimizer.lr": 0.001}),
        "b": submit(client, name="b", project="churn", tags={"team": "nlp"}, **{"optimizer.lr": 0.05}),
        "c": submit(client, name="c", project="churn", tags={"team": "Vision"}, **{"optimizer.lr": 0.005}),
        "d": submit(client, name="d-x", project="other", tags={"team": "vision"}, **{"optimizer.lr": 0.001}),
        "e": submit(client, name="e", project="churn", **{"optimizer.lr": 0.002}),
    }
    finish(app, made["a"], test_accuracy=0.95, val_loss=0.2)
    finish(app, made["b"], test_accuracy=0.97, val_loss=0.1)
    finish(app, made["c"], "failed", test_accuracy=0.91, val_loss=0.4)
    finish(app, made["d"], test_accuracy=0.99, val_loss=0.05)
    with app.extensions["trainq"].sessions() as session:  # e runs: its latest reported value is its summary
        session.execute(update(Job).where(Job.id == made["e"]).values(status="running"))
        session.add_all([Metric(job_id=made["e"], name="test_accuracy", step=s, epoch=s, value=v)
                         for s, v in ((1, 0.99), (2, 0.93))])
        session.commit()
    return made


def found(client, runs, **args) -> list[str]:
    answer = client.get("/api/v1/jobs", query_string=args)
    assert answer.status_code == 200, answer.json
    names = {v: k for k, v in runs.items()}
    return [names[j["id"]] for j in answer.json["jobs"]]


def test_the_issue_s_filter_finds_exactly_the_runs_it_names(client, runs):
    text = ("metrics.test_accuracy > 0.9 and params.optimizer.lr < 0.01 and tags.team = 'vision' "
            "and attributes.status = 'succeeded'")
    assert found(client, runs, filter=text) == ["d", "a"]
    assert found(client, runs, filter=text, project="churn") == ["a"]
    assert found(client, runs, project="churn") == ["e", "c", "b", "a"]


COMPARISONS = [
    ("metrics.test_accuracy >= 0.95", ["d", "b", "a"]),  # e's latest is 0.93, not its best 0.99
    ("metrics.test_accuracy < 0.94", ["e", "c"]),
    ("metrics.missing > 0", []),
    ("params.optimizer.lr = 0.001", ["d", "a"]),
    ("params.optimizer.lr = '0.001'", ["d", "a"]),  # a number's text, as MLflow keeps a param
    ("params.optimizer.type = 'adam'", ["e", "d", "c", "b", "a"]),
    ("params.optimizer.type < 3", []),  # text is not a number: no match, and no error from the database
    ("params.model.layers.0.units = 64 and params.model.layers[2].units = 10", ["e", "d", "c", "b", "a"]),
    ("tags.team = 'vision'", ["d", "a"]),
    ("tags.team != 'vision'", ["c", "b"]),  # a run without the tag neither equals nor differs
    ("tags.team LIKE 'v%'", ["d", "a"]),  # LIKE is case-sensitive
    ("tags.team ILIKE 'v%'", ["d", "c", "a"]),
    ("tags.team IS NULL", ["e"]),
    ("tags.size = '3'", ["a"]),
    ("tags.team IN ('nlp', 'Vision')", ["c", "b"]),
    ("attributes.status = 'FINISHED'", ["d", "b", "a"]),  # MLflow's name for succeeded
    ("status IN ('failed', 'running')", ["e", "c"]),
    ("attributes.run_name LIKE '%-x'", ["d"]),
    ("attributes.project = 'other'", ["d"]),
    ("attributes.user_id = 'alice'", ["e", "d", "c", "b", "a"]),
    ("attributes.created > 0", ["e", "d", "c", "b", "a"]),
]


@pytest.mark.parametrize("text,expected", COMPARISONS)
def test_each_comparison_runs_in_sql(client, runs, text, expected):
    assert found(client, runs, filter=text) == expected


def test_each_comparison_runs_the_same_on_sqlite(client, runs, app, tmp_path):
    """The embedded default (SQLite) reads the same filters: its JSON functions, and GLOB for a case-sensitive LIKE."""
    from sqlalchemy.orm import Session

    from trainq.service.db import make_engine
    from trainq.service.migrate import upgrade
    from trainq.service.search import order_clauses, where_clause
    from trainq.service.tables import User

    url = f"sqlite:///{tmp_path / 'search.db'}"
    upgrade(url)
    engine = make_engine(url)
    with app.extensions["trainq"].sessions() as source, Session(engine) as target:
        for model in (User, Job, Metric):
            for row in source.scalars(select(model)):
                target.merge(row)
        target.commit()
        names = {v: k for k, v in runs.items()}
        for text, expected in COMPARISONS:
            query = select(Job.id).where(Job.id.in_(list(names)), where_clause(text, "sqlite"))
            got = [names[i] for i in target.scalars(query.order_by(Job.created_at.desc()))]
            assert got == expected, text
        query = select(Job.id).where(Job.id.in_(list(names))).order_by(*order_clauses("metrics.val_loss ASC", "sqlite"))
        assert [names[i] for i in target.scalars(query)] == ["d", "b", "a", "c", "e"]
    engine.dispose()


def test_order_by_a_metric_puts_runs_without_it_last(client, runs):
    assert found(client, runs, order_by="metrics.val_loss ASC") == ["d", "b", "a", "c", "e"]
    assert found(client, runs, order_by="metrics.val_loss DESC") == ["c", "a", "b", "d", "e"]
    assert found(client, runs, order_by="params.optimizer.lr DESC, attributes.run_name ASC") == [
        "b", "c", "e", "a", "d"]


def test_a_filter_that_does_not_parse_is_a_400_naming_the_position(client, runs):
    answer = client.get("/api/v1/jobs", query_string={"filter": "metrics.a > 1 or metrics.b > 2"})
    assert answer.status_code == 400 and answer.json["position"] == 14
    assert answer.json["errors"][0]["path"] == "filter" and "OR is not supported" in answer.json["message"]
    answer = client.get("/api/v1/jobs", query_string={"order_by": "metrics.a SIDEWAYS"})
    assert answer.status_code == 400 and answer.json["errors"][0]["path"] == "order_by"


def test_another_user_s_runs_stay_out_of_a_search(client_as, runs):
    bob = client_as("bob")
    assert bob.get("/api/v1/jobs", query_string={"filter": "tags.team = 'vision'"}).json["jobs"] == []


# -- tags and notes -------------------------------------------------------------------------------------------------------


def test_tags_are_set_removed_searched_and_audited(app, client, client_as, runs):
    job = runs["e"]
    answer = client.put(f"/api/v1/jobs/{job}/tags/team", json={"value": "vision"})
    assert answer.status_code == 200 and answer.json["tags"] == {"team": "vision"}
    assert client.put(f"/api/v1/jobs/{job}/tags/stage/2", json={"value": 2}).json["tags"] == {
        "team": "vision", "stage/2": "2"}
    assert found(client, runs, filter="tags.team = 'vision'") == ["e", "d", "a"]
    assert client.get(f"/api/v1/jobs/{job}").json["tags"] == {"team": "vision", "stage/2": "2"}
    assert client.delete(f"/api/v1/jobs/{job}/tags/team").json["tags"] == {"stage/2": "2"}
    assert client.delete(f"/api/v1/jobs/{job}/tags/team").status_code == 404
    assert client.put(f"/api/v1/jobs/{job}/tags/$bad", json={"value": "x"}).status_code == 400
    refused = client.put(f"/api/v1/jobs/{job}/tags/team", json={"value": {"nested": 1}})
    assert refused.status_code == 422 and refused.json["errors"][0]["path"] == "value"
    assert client_as("bob").put(f"/api/v1/jobs/{job}/tags/team", json={"value": "x"}).status_code == 404
    with app.extensions["trainq"].sessions() as session:
        logged = session.scalars(select(AuditEntry).where(AuditEntry.target == f"job:{job}")
                                 .order_by(AuditEntry.id)).all()
    assert [(a.action, a.user_name, (a.detail or {}).get("key")) for a in logged][-3:] == [
        ("tag", "alice", "team"), ("tag", "alice", "stage/2"), ("untag", "alice", "team")]


def test_a_note_is_markdown_that_runs_no_script(client, runs):
    job = runs["a"]
    text = "Why: **baseline**.\n\n<script>alert(1)</script> [x](javascript:alert(1)) [ok](https://example.org)"
    answer = client.put(f"/api/v1/jobs/{job}/note", json={"note": text})
    assert answer.status_code == 200
    html = answer.json["html"]
    assert "<strong>baseline</strong>" in html and '<a href="https://example.org">ok</a>' in html
    assert "<script" not in html and "javascript:" not in html.replace("[x](javascript:alert(1))", "")
    assert "&lt;script&gt;" in html
    assert client.get(f"/api/v1/jobs/{job}").json["note"] == text
    assert client.put(f"/api/v1/jobs/{job}/note", json={"note": ""}).status_code == 200
    assert client.get(f"/api/v1/jobs/{job}").json["note"] == ""
    assert client.put(f"/api/v1/jobs/{job}/note", json={"text": "x"}).status_code == 422


def test_a_spec_s_project_and_tags_are_checked_at_their_paths(client):
    answer = client.post("/api/v1/jobs", json=with_(mlp(), project="no spaces"))
    assert answer.status_code == 422 and answer.json["errors"][0]["path"] == "project"
    answer = client.post("/api/v1/jobs", json=with_(mlp(), tags={"ok": "x", "team": ["a"]}))
    assert answer.status_code == 422 and answer.json["errors"][0]["path"].startswith("tags.team")


# -- anything typed into the box ---------------------------------------------------------------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

WORDS = ["metrics.m", "params.optimizer.lr", "tags.team", "attributes.status", "status", "run_name", "and", "AND",
         "or", "=", "!=", "<", ">=", "LIKE", "ILIKE", "IN", "NOT", "IS", "NULL", "(", ")", ",", "'x'", '"y"', "1",
         "-2.5e3", "`f 1`", "metrics.`a b`", "params.model.layers[0].units", "attributes.start_time", "ASC", "DESC"]


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.text(max_size=60), st.lists(st.sampled_from(WORDS), max_size=9).map(" ".join)))
def test_whatever_is_typed_reads_or_is_refused_with_a_position_never_an_error(text):
    """Random text and random sequences of the language's words: a SearchError with a position inside the text, or
    a filter that compiles to SQL on both databases; no other exception (which the API would answer with a 500)."""
    from trainq.service.search import order_clauses, where_clause

    for compile_ in (where_clause, order_clauses):
        for dialect in ("postgresql", "sqlite"):
            try:
                compiled = compile_(text, dialect)
            except SearchError as refused:
                assert 0 <= refused.position <= len(text)
                continue
            if compiled is not None:  # and the statement builds in that database's dialect
                from sqlalchemy.dialects import postgresql, sqlite

                terms = [compiled] if compile_ is where_clause else compiled
                for term in terms:
                    str(term.compile(dialect=(postgresql if dialect == "postgresql" else sqlite).dialect()))


def test_a_project_s_compare_page_takes_its_finished_runs_only(client, runs):
    page = client.get("/compare?project=churn").get_data(as_text=True)
    ids = page.split('name="ids" value="', 1)[1].split('"', 1)[0].split(",")
    assert set(ids) == {runs["a"], runs["b"], runs["c"]}  # e still runs, d is of another project
    assert client.get("/projects/churn").status_code == 200 and client.get("/projects/nothing").status_code == 404
