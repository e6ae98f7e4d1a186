"""A table's profile, computed in one streamed pass: rows; per column its inferred type, missing and distinct counts,
a few values and, for numbers, their range; the target's classes with their counts (or its range).

Inferred types:
    number      numbers (integers or floats; NaN and infinities count as missing)
    binary      two distinct values (numbers, booleans or strings)
    category    strings with repeats (a plan, a country); categories are one-hot coded, or embedded on request
    identifier  strings that never repeat (a customer id): left out of training
    text        free text (several words, mostly distinct): left out of training for now
    datetime    dates and times: left out of training for now
    empty       every value missing: left out
Distinct values are counted exactly up to DISTINCT_CAP; past it a column is "many-valued".
"""

from __future__ import annotations

import math
from itertools import islice
from typing import Any, Iterable

from trainq.data.formats import RESTART, DataError

DISTINCT_CAP = 10_000
EXAMPLES = 5
MAX_CLASSES = 1000
TEXT_SAMPLE = 100_000  # values of a text column whose words are counted (free text or not)
SPREAD_SAMPLE = 1_000_000  # values of a number column its standard deviation is estimated from
TARGETABLE = 100  # a column with at most this many values keeps its value counts (it may be a target)
CLASSIFY_INTEGERS_UP_TO = 50  # an integer target with at most this many values is read as class labels
LEFT_OUT = ("identifier", "text", "datetime", "empty")
NOTES = {
    "identifier": "every value differs: an identifier, left out of training (dataset.columns: {NAME: category} "
                  "uses it)",
    "text": "free text, left out of training (tokenized text is not trained on yet)",
    "datetime": "dates and times are left out of training (split them into number columns to use them)",
    "empty": "every value is missing: left out",
}


def label(value: Any) -> str:
    """A raw value as the text it is known by (a class name, a vocabulary entry): booleans as true/false, whole
    floats without '.0', everything else as str()."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def class_order(names: Iterable[str]) -> list[str]:
    """Class names in the order their indexes take: whole numbers by value, then the rest alphabetically."""
    def key(v: str):
        digits = v.lstrip("-")
        return (0, len(digits), v) if digits.isdigit() else (1, 0, v)
    return sorted(set(names), key=key)


class _Column:
    """Running counts of one column over the batches seen so far."""

    def __init__(self, name: str, arrow_type, is_target: bool):
        import pyarrow as pa

        self.name, self.type, self.is_target = name, arrow_type, is_target
        self.numeric = pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type)
        self.floating = pa.types.is_floating(arrow_type)
        self.boolean = pa.types.is_boolean(arrow_type)
        self.string = pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type)
        self.temporal = pa.types.is_temporal(arrow_type)
        self.present = self.missing = 0
        self.counts: dict[Any, int] = {}  # value -> count, exact until `capped`
        self.capped = False
        self.repeated = False  # a value was seen twice while counting was exact
        self.low = self.high = None
        self.total = self.squares = 0.0
        self.words = self.length = self.sampled = 0  # over the first TEXT_SAMPLE values of a text column
        self.sample_sum = 0.0  # of the first SPREAD_SAMPLE values of a number column, for its spread

    def add(self, array) -> None:
        import pyarrow as pa
        import pyarrow.compute as pc

        nulls = array.null_count
        present = len(array) - nulls
        if self.floating and present:
            finite = pc.is_finite(array)
            good = pc.sum(finite).as_py() or 0
            if good != present:  # NaN and infinities are missing values too
                nulls, present = nulls + present - good, good
                array = pc.filter(array, finite)
        self.missing += nulls
        self.present += present
        if not present:
            return
        if self.numeric:  # minima, maxima and sums skip missing values; the spread comes from the first values
            bounds = pc.min_max(array).as_py()
            self.low = bounds["min"] if self.low is None else min(self.low, bounds["min"])
            self.high = bounds["max"] if self.high is None else max(self.high, bounds["max"])
            self.total += pc.mean(array).as_py() * present  # pc.sum wraps around on large integers
            if self.sampled < SPREAD_SAMPLE:
                part = array.slice(0, SPREAD_SAMPLE - self.sampled).cast(pa.float64()).drop_null()
                self.sample_sum += pc.sum(part).as_py() or 0.0
                self.squares += pc.sum(pc.multiply(part, part)).as_py() or 0.0
                self.sampled += len(part)
        elif self.string and self.sampled < TEXT_SAMPLE:  # words per value: the first values tell text apart
            part = array.slice(0, TEXT_SAMPLE - self.sampled).drop_null()
            self.words += pc.sum(pc.count_substring(part, " ")).as_py() + len(part)
            self.length += pc.sum(pc.utf8_length(part)).as_py()
            self.sampled += len(part)
        if self.capped and not self.is_target:
            return
        counted = pc.value_counts(array)
        for value, count in zip(counted.field("values").to_pylist(), counted.field("counts").to_pylist()):
            if value is None:
                continue
            seen = self.counts.get(value)
            if seen is not None or count > 1:
                self.repeated = True
            self.counts[value] = (seen or 0) + count
        if len(self.counts) > DISTINCT_CAP and not self.is_target:
            self.capped = True

    @property
    def distinct(self) -> int:
        return len(self.counts)

    def inferred(self) -> str:
        if self.present == 0:
            return "empty"
        if self.temporal:
            return "datetime"
        if self.boolean or (self.distinct <= 2 and not self.capped):
            return "binary"
        if self.numeric:
            return "number"
        if not self.string:
            return "category"
        words = self.words / max(self.sampled, 1)
        if not self.repeated and self.present >= 20:
            return "text" if words >= 3 else "identifier"
        if words >= 4 and (self.capped or self.distinct > 0.5 * self.present):
            return "text"
        return "category"

    def examples(self) -> list:
        return [v if isinstance(v, (bool, int, float)) else str(v)[:60] for v in islice(self.counts, EXAMPLES)]

    def as_dict(self) -> dict[str, Any]:
        kind = self.inferred()
        out: dict[str, Any] = {"name": self.name, "type": kind, "dtype": str(self.type), "count": self.present,
                               "missing": self.missing,
                               "distinct": self.distinct, "many_values": self.capped, "examples": self.examples()}
        if self.numeric and self.present:
            sample_mean = self.sample_sum / max(self.sampled, 1)
            out.update(min=self.low, max=self.high, mean=self.total / self.present,
                       std=math.sqrt(max(self.squares / max(self.sampled, 1) - sample_mean ** 2, 0.0)))
        if not self.capped and (self.distinct <= TARGETABLE or (self.is_target and self.distinct <= MAX_CLASSES)):
            counts: dict[str, int] = {}
            for value, count in self.counts.items():
                counts[label(value)] = counts.get(label(value), 0) + count
            out["counts"] = {name: counts[name] for name in class_order(counts)}
        if kind in NOTES:
            out["note"] = NOTES[kind].replace("NAME", self.name)
        return out


def profile_table(batches: Iterable, fmt: str, target: str | None = None, task: str | None = None,
                  max_rows: int | None = None) -> dict[str, Any]:
    """Profile a table's record batches in one pass. `target` names the column to predict (default: the last);
    `task` is classification or regression (default: read from the target's values)."""
    columns: list[_Column] = []
    rows = 0
    for batch in batches:
        if batch is RESTART:  # a column is typed otherwise from here: count again from the start
            columns, rows = [], 0
            continue
        if not columns:
            names = batch.schema.names
            target = target if target is not None else names[-1]
            if target not in names:
                raise DataError(f"no column named {target!r} for the target; the columns are "
                                f"{', '.join(names[:20])}{' ...' if len(names) > 20 else ''}")
            columns = [_Column(f.name, f.type, f.name == target) for f in batch.schema]
        rows += batch.num_rows
        if max_rows and rows > max_rows:
            raise DataError(f"more than {max_rows} rows, the limit of this service (TRAINQ_MAX_DATASET_ROWS)")
        for column, array in zip(columns, batch.columns):
            column.add(array)
    if not columns or rows == 0:
        raise DataError("the file holds no rows; a table needs a header (or field names) and data rows")
    if len(columns) < 2:
        raise DataError("the table has one column; it needs the target and at least one feature")
    goal = next(c for c in columns if c.is_target)
    profile: dict[str, Any] = {"format": fmt, "kind": "table", "rows": rows,
                               "columns": [c.as_dict() for c in columns], "notes": []}
    profile["target"] = target_summary(next(c for c in profile["columns"] if c["name"] == target), task)
    if goal.missing:
        profile["notes"].append(f"{goal.missing} rows have no {goal.name!r} (the target) and are left out")
    used = [c for c in profile["columns"] if not c["name"] == goal.name and c["type"] not in LEFT_OUT]
    if not used:
        raise DataError("no column is left to learn from: every feature is an identifier, free text, a date or empty; "
                        "name the ones to use in dataset.columns (e.g. {plan: category})")
    return profile


NUMERIC_DTYPES = ("int", "uint", "double", "float", "halffloat")


def target_summary(column: dict[str, Any], task: str | None = None) -> dict[str, Any]:
    """A column as the target, from its profile: classification with its classes and their counts, or regression
    with its range. `task` decides; else text and booleans are classes, whole numbers with at most
    CLASSIFY_INTEGERS_UP_TO values are classes, other numbers are regression."""
    name = column["name"]
    present = column["count"]
    numeric = column["dtype"].startswith(NUMERIC_DTYPES)
    if present < 8:
        raise DataError(f"{present} rows have a value in {name!r} (the target); at least 8 are needed to split train, "
                        "validation and test")
    if task is None:
        whole = numeric and "counts" in column and all(v.lstrip("-").isdigit() for v in column["counts"])
        task = ("classification" if not numeric or (whole and len(column["counts"]) <= CLASSIFY_INTEGERS_UP_TO)
                else "regression")
    if task == "regression":
        if not numeric:
            raise DataError(f"the target {name!r} holds text ({', '.join(map(repr, column['examples'][:3]))}); "
                            "regression needs numbers: upload with task=classification, or choose another target")
        return {"name": name, "task": task, "min": column.get("min"), "max": column.get("max"),
                "mean": column.get("mean")}
    if "counts" not in column:
        raise DataError(f"the target {name!r} has too many distinct values to be classes; upload it as regression "
                        "(task=regression) or choose another target")
    if len(column["counts"]) < 2:
        raise DataError(f"the target {name!r} has one class ({next(iter(column['counts']), '')!r}); classification "
                        "needs at least two")
    return {"name": name, "task": task, "classes": dict(column["counts"])}
