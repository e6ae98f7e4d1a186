"""MLflow's run search language over trainq's jobs, compiled to one SQL condition (never a loop over jobs).

    metrics.test_accuracy > 0.9 and params.optimizer.lr < 0.01 and tags.team = 'vision'
        and attributes.status = 'succeeded'

As MLflow's `search_runs` reads it (mlflow.utils.search_utils): comparisons joined by AND (no OR); an identifier is
`TYPE.KEY` with TYPE one of metric(s), param(s)/parameter(s), tag(s), attribute(s)/attr/run, or a bare KEY for an
attribute; a KEY with other characters is quoted in backticks or double quotes (metrics.`f1 score`). Metrics compare
with = != < <= > >= against a number; tags and params with = != LIKE ILIKE against a quoted string, or IS [NOT]
NULL; string attributes with = != LIKE ILIKE and IN / NOT IN lists; start_time, end_time and created are numbers
(milliseconds since 1970) compared as metrics are. LIKE is case-sensitive and ILIKE is not, on every database.

Where trainq reads more than MLflow (said in the README): `params.` names any path of the stored spec
(params.optimizer.lr, params.model.layers.0.units) and compares it with a number as a metric is, since a spec keeps
numbers as numbers (MLflow's params are strings and refuse it); IN / NOT IN lists take any string attribute, tag
or param (MLflow: run_id only). A metric is the run's summary: its final metrics once it finished, else the latest
value it reported. A status is trainq's (succeeded, failed, ...) or MLflow's name for it (FINISHED, KILLED, ...).

A filter that does not parse is a SearchError with the position (0-based) where reading stopped, which the API
answers as a 400 naming it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import Float, String, and_, case, cast, func, literal, null, select, type_coerce
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.sql.elements import ColumnElement

from trainq.service.tables import Job, Metric, User

TYPES = {"metric": "metric", "metrics": "metric", "param": "param", "params": "param", "parameter": "param",
         "parameters": "param", "tag": "tag", "tags": "tag", "attribute": "attribute", "attributes": "attribute",
         "attr": "attribute", "run": "attribute"}
NUMERIC_OPS = {"=", "!=", "<", "<=", ">", ">="}
STRING_OPS = {"=", "!=", "LIKE", "ILIKE"}
MLFLOW_STATUS = {"FINISHED": "succeeded", "FAILED": "failed", "KILLED": "cancelled", "RUNNING": "running",
                 "SCHEDULED": "queued"}
STRING_ATTRIBUTES = {"run_id": Job.id, "id": Job.id, "run_name": Job.name, "run name": Job.name, "name": Job.name,
                     "status": Job.status, "project": Job.project, "pool": Job.pool, "worker": Job.worker,
                     "device": Job.device, "sweep_id": Job.sweep_id, "stop_reason": Job.stop_reason}
TIME_ATTRIBUTES = {"start_time": Job.started_at, "end_time": Job.finished_at, "created": Job.created_at,
                   "Created": Job.created_at}
COUNT_ATTRIBUTES = {"epoch": Job.epoch, "max_epochs": Job.max_epochs, "attempts": Job.attempts,
                    "priority": Job.priority, "parameters": Job.params}
USER_ATTRIBUTES = {"user_id", "user"}
ATTRIBUTES = sorted({*STRING_ATTRIBUTES, *TIME_ATTRIBUTES, *COUNT_ATTRIBUTES, *USER_ATTRIBUTES} - {"Created"})


class SearchError(ValueError):
    def __init__(self, message: str, position: int, text: str):
        self.position = position
        pointer = f"{text[max(0, position - 30):position]}⟶{text[position:position + 30]}"
        super().__init__(f"at position {position} ({pointer!r}): {message}")
        self.reason = message


@dataclass(frozen=True)
class Token:
    kind: str  # ident | string | number | op | word | ( | ) | , | end
    text: str
    value: Any
    at: int


WORDS = {"AND", "LIKE", "ILIKE", "IN", "NOT", "IS", "NULL", "ASC", "DESC", "OR"}
LEX = re.compile(r"""
    (?P<space>\s+)
  | (?P<number>[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?(?![A-Za-z_]))
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*(?:\.(?:`[^`]*`|"[^"]*"|[A-Za-z0-9_\[\]/:]+))*(?:\.(?:`[^`]*`|"[^"]*"))?)
  | (?P<string>'(?:[^'\\]|\\.|'')*'|"(?:[^"\\]|\\.)*")
  | (?P<op>!=|<>|>=|<=|=|<|>)
  | (?P<punct>[(),])
""", re.VERBOSE)


def tokens(text: str) -> list[Token]:
    out, at = [], 0
    while at < len(text):
        match = LEX.match(text, at)
        if match is None:
            raise SearchError(f"cannot read {text[at]!r} here", at, text)
        kind, raw = match.lastgroup, match.group()
        if kind == "ident" and raw.upper() in WORDS:
            out.append(Token("word", raw.upper(), raw.upper(), at))
        elif kind == "ident":
            out.append(Token("ident", raw, raw, at))
        elif kind == "string":
            body = raw[1:-1]
            body = body.replace("''", "'") if raw[0] == "'" else body
            out.append(Token("string", raw, re.sub(r"\\(.)", r"\1", body), at))
        elif kind == "number":
            out.append(Token("number", raw, float(raw) if re.search(r"[.eE]", raw) else int(raw), at))
        elif kind == "op":
            out.append(Token("op", raw, "!=" if raw == "<>" else raw, at))
        elif kind == "punct":
            out.append(Token(raw, raw, raw, at))
        at = match.end()
    out.append(Token("end", "", None, len(text)))
    return out


def unquote(key: str) -> str:
    return key[1:-1] if len(key) >= 2 and key[0] == key[-1] and key[0] in "`\"" else key


@dataclass(frozen=True)
class Key:
    type: str  # metric | param | tag | attribute
    name: str
    at: int


def split_identifier(token: Token, text: str) -> Key:
    head, dot, rest = token.text.partition(".")
    if not dot:  # a bare key is an attribute, as in MLflow
        head, dot, rest = "attributes", ".", token.text
    kind = TYPES.get(unquote(head))
    if kind is None:
        raise SearchError(f"unknown entity type {head!r}: one of metrics, params, tags, attributes (or their "
                          "singular forms)", token.at, text)
    name = rest if kind == "param" else unquote(rest)
    if not name:
        raise SearchError(f"{head}. needs a name after the dot", token.at, text)
    if kind == "attribute" and name not in STRING_ATTRIBUTES and name not in TIME_ATTRIBUTES \
            and name not in COUNT_ATTRIBUTES and name not in USER_ATTRIBUTES:
        raise SearchError(f"unknown attribute {name!r}; one of {ATTRIBUTES}", token.at, text)
    return Key(kind, name, token.at)


@dataclass(frozen=True)
class Comparison:
    key: Key
    op: str  # = != < <= > >= LIKE ILIKE IN NOT IN IS NULL IS NOT NULL
    value: Any  # a number, a string, a tuple of strings (IN), None (IS NULL)


class Parser:
    def __init__(self, text: str):
        self.text, self.items, self.i = text, tokens(text), 0

    @property
    def here(self) -> Token:
        return self.items[self.i]

    def take(self) -> Token:
        token = self.items[self.i]
        self.i += 1
        return token

    def error(self, message: str, token: Token | None = None):
        raise SearchError(message, (token or self.here).at, self.text)

    def filter(self) -> list[Comparison]:
        if self.here.kind == "end":
            return []
        found = [self.comparison()]
        while self.here.kind == "word" and self.here.value == "AND":
            self.take()
            found.append(self.comparison())
        if self.here.kind == "word" and self.here.value == "OR":
            self.error("OR is not supported (as in MLflow): join comparisons with AND, or run two searches")
        if self.here.kind != "end":
            self.error(f"expected AND or the end of the filter, found {self.here.text!r}")
        return found

    def comparison(self) -> Comparison:
        token = self.here
        if token.kind != "ident":
            self.error(f"expected an identifier such as metrics.val_loss, params.optimizer.lr, tags.team or "
                       f"attributes.status, found {token.text or 'the end'!r}")
        self.take()
        key = split_identifier(token, self.text)
        op = self.here
        if op.kind == "op":
            self.take()
            return self.checked(key, op.value, self.value(), op)
        if op.kind == "word" and op.value in ("LIKE", "ILIKE"):
            self.take()
            return self.checked(key, op.value, self.value(), op)
        if op.kind == "word" and op.value == "IS":
            self.take()
            negated = self.here.kind == "word" and self.here.value == "NOT"
            if negated:
                self.take()
            if not (self.here.kind == "word" and self.here.value == "NULL"):
                self.error("expected NULL after IS")
            self.take()
            return self.checked(key, "IS NOT NULL" if negated else "IS NULL", None, op)
        if op.kind == "word" and op.value in ("IN", "NOT"):
            self.take()
            if op.value == "NOT":
                if not (self.here.kind == "word" and self.here.value == "IN"):
                    self.error("expected IN after NOT")
                self.take()
            return self.checked(key, "NOT IN" if op.value == "NOT" else "IN", self.listed(), op)
        self.error(f"expected a comparator (= != < <= > >= LIKE ILIKE IN IS NULL) after {token.text}, found "
                   f"{op.text or 'the end'!r}")

    def value(self) -> Token:
        token = self.here
        if token.kind not in ("string", "number"):
            self.error(f"expected a value (a number, or a string in single or double quotes), found "
                       f"{token.text or 'the end'!r}")
        return self.take()

    def listed(self) -> tuple[Token, ...]:
        if self.here.kind != "(":
            self.error("expected a list in parentheses: IN ('a', 'b')")
        self.take()
        values = [self.value()]
        while self.here.kind == ",":
            self.take()
            values.append(self.value())
        if self.here.kind != ")":
            self.error("expected , or ) in the list")
        self.take()
        return tuple(values)

    def checked(self, key: Key, op: str, value: Any, at: Token) -> Comparison:
        """The operator and the value's type as MLflow allows them for the key's type (and trainq's extensions)."""
        where = value[0] if isinstance(value, tuple) else value if isinstance(value, Token) else at
        numeric = isinstance(value, Token) and value.kind == "number"
        if key.type == "metric" or (key.type == "attribute" and (key.name in TIME_ATTRIBUTES
                                                                  or key.name in COUNT_ATTRIBUTES)):
            what = "a metric" if key.type == "metric" else f"attribute {key.name}"
            if op not in NUMERIC_OPS:
                self.error(f"{what} compares with = != < <= > >=, not {op}", at)
            if not numeric:
                self.error(f"{what} compares with a number, not {value.text}", where)
            return Comparison(key, op, value.value)
        if op in ("IS NULL", "IS NOT NULL"):
            if key.type == "attribute":
                self.error("IS NULL and IS NOT NULL apply to tags and params only", at)
            return Comparison(key, op, None)
        if op in ("IN", "NOT IN"):
            if any(v.kind != "string" for v in value):
                self.error("an IN list holds quoted strings", next(v for v in value if v.kind != "string"))
            return Comparison(key, op, tuple(v.value for v in value))
        if numeric and key.type == "param":  # trainq's spec keeps numbers: params.optimizer.lr < 0.01
            if op not in NUMERIC_OPS:
                self.error(f"{op} compares strings; quote the value", where)
            return Comparison(key, op, value.value)
        if op not in STRING_OPS:
            self.error(f"a {key.type} compares with = != LIKE ILIKE, not {op}", at)
        if not isinstance(value, Token) or value.kind != "string":
            self.error(f"a {key.type} compares with a string in quotes, not {value.text}", where)
        return Comparison(key, op, value.value)


def parse_filter(text: str) -> list[Comparison]:
    return Parser(text).filter()


@dataclass(frozen=True)
class Ordering:
    key: Key
    descending: bool


def parse_order_by(text: str) -> list[Ordering]:
    """`metrics.val_loss ASC, attributes.start_time DESC`: identifiers as in a filter, each ASC (default) or DESC."""
    parser = Parser(text)
    out = []
    while True:
        token = parser.here
        if token.kind != "ident":
            parser.error(f"expected an identifier to order by, found {token.text or 'the end'!r}")
        parser.take()
        key = split_identifier(token, text)
        descending = False
        if parser.here.kind == "word" and parser.here.value in ("ASC", "DESC"):
            descending = parser.take().value == "DESC"
        out.append(Ordering(key, descending))
        if parser.here.kind == "end":
            return out
        if parser.here.kind != ",":
            parser.error(f"expected , ASC, DESC or the end, found {parser.here.text!r}")
        parser.take()


# ---------------------------------------------------------------------------------------------------------------------
# SQL
# ---------------------------------------------------------------------------------------------------------------------


def spec_path(name: str) -> tuple[str | int, ...]:
    """params.model.layers.0.units or params.model.layers[0].units -> ('model', 'layers', 0, 'units')."""
    parts = re.findall(r"[^.\[\]]+", name)
    return tuple(int(p) if p.isdigit() else p for p in parts)


def json_number(dialect: str, column, path: tuple) -> ColumnElement:
    """A JSON value as a float where it is a number, else NULL (a string or an object never fails a cast)."""
    if dialect == "postgresql":
        element = column[path] if len(path) > 1 else column[path[0]]
        return case((func.jsonb_typeof(element) == "number", cast(element.as_string(), Float)), else_=null())
    where = "$" + "".join(f"[{p}]" if isinstance(p, int) else f'."{p}"' for p in path)
    return case((func.json_type(column, where).in_(("integer", "real")), func.json_extract(column, where)),
                else_=null())


def json_text(dialect: str, column, path: tuple) -> ColumnElement:
    """A JSON scalar as text (a number as its digits, as MLflow keeps a param); an object or a list is NULL."""
    if dialect == "postgresql":
        element = column[path] if len(path) > 1 else column[path[0]]
        return case((func.jsonb_typeof(element).in_(("string", "number", "boolean")), element.as_string()),
                    else_=null())
    where = "$" + "".join(f"[{p}]" if isinstance(p, int) else f'."{p}"' for p in path)
    return case((func.json_type(column, where).in_(("text", "integer", "real")), cast(func.json_extract(column, where),
                                                                                        String)),
                (func.json_type(column, where) == "true", literal("true")),
                (func.json_type(column, where) == "false", literal("false")), else_=null())


def metric_value(dialect: str, name: str) -> ColumnElement:
    """A run's summary of a metric: its final value once it finished, else the latest value it reported."""
    latest = (select(Metric.value).where(Metric.job_id == Job.id, Metric.name == name)
              .order_by(Metric.step.desc()).limit(1).correlate(Job).scalar_subquery())
    return func.coalesce(json_number(dialect, Job.metrics, (name,)), latest)


def like(dialect: str, column, pattern: str, insensitive: bool) -> ColumnElement:
    if insensitive:
        return column.ilike(pattern)
    if dialect == "sqlite":  # SQLite's LIKE ignores case; GLOB does not
        glob = "".join({"%": "*", "_": "?", "*": "[*]", "?": "[?]", "[": "[[]"}.get(c, c) for c in pattern)
        return column.op("GLOB")(glob)
    return column.like(pattern)


def compare(column, op: str, value: Any, dialect: str) -> ColumnElement:
    if op in ("LIKE", "ILIKE"):
        return like(dialect, column, value, op == "ILIKE")
    if op == "IN":
        return column.in_(value)
    if op == "NOT IN":
        return and_(column.is_not(None), column.not_in(value))
    if op == "IS NULL":
        return column.is_(None)
    if op == "IS NOT NULL":
        return column.is_not(None)
    return {"=": column.__eq__, "!=": column.__ne__, "<": column.__lt__, "<=": column.__le__, ">": column.__gt__,
            ">=": column.__ge__}[op](value)


def when(ms: float) -> datetime:
    return datetime.fromtimestamp(ms / 1000.0, tz=timezone.utc)


def column_of(key: Key, dialect: str, numeric: bool):
    """The SQL expression a key reads, and how a compared value is to be converted."""
    if key.type == "metric":
        return metric_value(dialect, key.name), float
    if key.type == "param":
        path = spec_path(key.name)
        return (json_number if numeric else json_text)(dialect, Job.spec, path), (float if numeric else str)
    if key.type == "tag":
        return json_text(dialect, Job.tags, (key.name,)), str
    if key.name in TIME_ATTRIBUTES:
        return TIME_ATTRIBUTES[key.name], when
    if key.name in COUNT_ATTRIBUTES:
        return COUNT_ATTRIBUTES[key.name], float
    if key.name in USER_ATTRIBUTES:
        return select(User.name).where(User.id == Job.owner_id).correlate(Job).scalar_subquery(), str
    return STRING_ATTRIBUTES[key.name], str


def condition(c: Comparison, dialect: str) -> ColumnElement:
    if c.key.type == "tag" and c.op == "=" and dialect == "postgresql":
        return type_coerce(Job.tags, JSONB).contains({c.key.name: c.value})  # @>, which ix_jobs_tags (GIN) answers
    column, convert = column_of(c.key, dialect, isinstance(c.value, (int, float)))
    value = c.value
    if c.key.type == "attribute" and c.key.name == "status":
        value = (tuple(MLFLOW_STATUS.get(v, v) for v in value) if isinstance(value, tuple)
                 else MLFLOW_STATUS.get(value, value))
    elif value is not None and not isinstance(value, tuple):
        value = convert(value)
    return compare(column, c.op, value, dialect)


def where_clause(text: str, dialect: str) -> ColumnElement | None:
    """The filter as one SQL condition (None for an empty filter); SearchError if it does not parse."""
    found = parse_filter(text)
    return and_(*(condition(c, dialect) for c in found)) if found else None


def order_clauses(text: str, dialect: str) -> list[ColumnElement]:
    """ORDER BY terms; runs without the ordered value come last either way (as MLflow orders them)."""
    out = []
    for o in parse_order_by(text):
        column, _ = column_of(o.key, dialect, numeric=o.key.type in ("metric", "param"))
        if o.key.type == "param":  # a number orders as a number, text as text
            out.append((column.desc() if o.descending else column.asc()).nulls_last())
            column = json_text(dialect, Job.spec, spec_path(o.key.name))
        out.append((column.desc() if o.descending else column.asc()).nulls_last())
    return out

