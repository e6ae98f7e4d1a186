"""Score a batch on this worker with onnxruntime (no torch): read the input row by row against the model's signature,
report the rows that do not fit by their number, score the rest in chunks while reporting progress, upload a CSV.

Row numbers are those a user sees: a CSV's line number (the header is line 1), an NPZ's or a dataset's row index
counted from 1."""

from __future__ import annotations

import csv
import io
import math
import tempfile
from pathlib import Path

import numpy as np

from trainq.settings import Settings
from trainq.workers.client import ServiceClient, run_claimed

CHUNK = 4096  # rows a call of onnxruntime; progress is reported after each
PROBLEMS = 1000  # failed rows described; more are counted


class InputProblem(Exception):
    """The input as a whole does not fit the model (a missing column, a shape): nothing can be scored."""


def run_score(batch_id: str, settings: Settings) -> str:
    """Score one batch; return what happened (skipped, succeeded, failed, fenced)."""
    client = ServiceClient(settings.service_url, settings.worker_token)
    base = f"/api/v1/worker/batches/{batch_id}"
    outcome = run_claimed(client, base, lambda claim, token: score(client, claim, base, token),
                          lambda exc: {"status": "failed", "error": str(exc) if isinstance(exc, InputProblem)
                                       else f"{type(exc).__name__}: {exc}"})
    return outcome if isinstance(outcome, str) else outcome["status"]


def score(client: ServiceClient, claim: dict, base: str, token: str) -> dict:
    import onnxruntime as ort

    signature = claim["signature"]
    blob = client.download(claim["input_url"], token)
    if "columns" in signature:  # a model of an uploaded table: raw columns in, by name
        rows, numbers, carried, problems, bad = read_table_input(blob, signature, claim["source"] == "dataset")
    else:
        rows, numbers, carried, problems, bad = read_input(blob, claim["source"], signature, claim.get("columns"))
    client.call("POST", f"{base}/progress", json={"rows": len(numbers) + bad, "done": 0, "bad_rows": bad},
                attempt_token=token)
    with tempfile.TemporaryDirectory(prefix="trainq-score-") as folder:
        path = Path(folder) / "model.onnx"
        path.write_bytes(client.download(claim["model_url"], token))
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o["name"] for o in signature["outputs"]]
    classes = signature.get("class_names")
    header, lines = answer_columns(names, signature, classes), []
    for start in range(0, count(rows), CHUNK):
        feeds = ({name: column[start:start + CHUNK] for name, column in rows.items()} if isinstance(rows, dict)
                 else {"x": rows[start:start + CHUNK]})
        results = dict(zip(names, session.run(names, feeds), strict=True))
        lines += answer_rows(results, classes)
        client.call("POST", f"{base}/progress", json={"done": min(start + CHUNK, count(rows)) + bad},
                    attempt_token=token)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["row", *carried[0], *header])  # the input's own columns, in its order, then the answers
    for number, kept, answer in zip(numbers, carried[1], lines, strict=True):
        writer.writerow([number, *kept, *answer])
    if claim.get("output_url"):  # straight into the object store, this claim's staging place
        client.call("PUT", claim["output_url"], data=out.getvalue().encode())
    else:
        client.call("PUT", f"{base}/output", data=out.getvalue().encode(), attempt_token=token,
                    headers={"Content-Type": "text/csv"})
    return {"status": "succeeded", "rows": len(numbers) + bad, "done": len(numbers) + bad, "bad_rows": bad,
            "problems": problems}


def count(rows) -> int:
    return len(next(iter(rows.values()))) if isinstance(rows, dict) else len(rows)


def read_table_input(blob: bytes, signature: dict, dataset: bool = False):
    """A table (CSV, TSV, Parquet, JSON Lines) for a model of an uploaded table: its raw columns as the graph's
    inputs, every input column carried to the output in the input's order. A row whose number column holds text, or
    that lacks a value the model requires, is a problem by its number (a CSV file's line, the header being line 1;
    an uploaded dataset's or another table's row, from 1); a CSV row with the wrong number of fields too. A missing
    value is filled inside the graph, as in training."""
    import pyarrow as pa

    from trainq.data.codec import strings
    from trainq.data.formats import DataError, sniff

    try:
        fmt = sniff(blob[:65536])
    except DataError as exc:
        raise InputProblem(str(exc)) from None
    if fmt not in ("csv", "tsv", "parquet", "jsonl"):
        raise InputProblem(f"a {fmt} file; this model takes a table (CSV, TSV, Parquet or JSON Lines) naming its "
                           f"columns ({', '.join(signature['features'][:6])})")
    ragged: list[int] = []
    table = _read_rows(blob, fmt, ragged)
    wanted = signature["columns"]
    missing = [c["name"] for c in wanted if c["name"] not in table.column_names]
    if missing:
        raise InputProblem(f"the table has no column {', '.join(missing[:6])}; the model's columns are "
                           + ", ".join(c["name"] for c in wanted[:8]) + (" ..." if len(wanted) > 8 else ""))
    first = 2 if fmt in ("csv", "tsv") and not dataset else 1  # what a user counts: a CSV's lines, else rows
    line = _line_numbers(table.num_rows, ragged, first)
    good = np.ones(table.num_rows, dtype=bool)
    problems: dict[int, str] = {}
    feeds = {}
    for c in wanted:
        text = strings(table.column(c["name"]))
        if c["kind"] == "number":
            values = np.full(len(text), np.nan, dtype=np.float32)
            for i, v in enumerate(text):
                if v == "":
                    continue
                try:
                    values[i] = float(v)
                except ValueError:
                    problems.setdefault(i, f"{c['name']}: {v[:40]!r} is not a number")
            feeds[c["name"]] = values
            empty = np.isnan(values)
        else:
            feeds[c["name"]] = text
            empty = text == ""
        if c["required"]:
            for i in np.flatnonzero(empty):
                problems.setdefault(int(i), f"{c['name']}: required (rows without it were dropped in training)")
    good[list(problems)] = False
    listed = sorted([(int(line[i]), m) for i, m in problems.items()] + [(n, "the row has the wrong number of fields")
                                                                    for n in ragged])
    rows = {name: column[good].reshape(-1, 1) for name, column in feeds.items()}
    carried_names = table.column_names
    kept = table.filter(pa.array(good))
    carried_values = list(zip(*(strings(kept.column(n)).tolist() for n in carried_names))) if kept.num_rows else []
    return (rows, line[good].tolist(), (carried_names, carried_values),
            [{"row": n, "message": m} for n, m in listed[:PROBLEMS]], len(problems) + len(ragged))


def _read_rows(blob: bytes, fmt: str, ragged: list[int]):
    """The table, a CSV's rows of the wrong width left out and their line numbers put in `ragged`."""
    import pyarrow as pa
    import pyarrow.csv as pcsv

    from trainq.data.formats import DataError, read_table

    if fmt not in ("csv", "tsv"):
        try:
            return read_table(io.BytesIO(blob), fmt)
        except DataError as exc:
            raise InputProblem(str(exc)) from None

    def skip(row) -> str:
        ragged.append(row.number)
        return "skip"

    try:  # one thread, so pyarrow knows each row's line number
        return pcsv.read_csv(io.BytesIO(blob), read_options=pcsv.ReadOptions(use_threads=False),
                             parse_options=pcsv.ParseOptions(delimiter="\t" if fmt == "tsv" else ",",
                                                             invalid_row_handler=skip),
                             convert_options=pcsv.ConvertOptions(strings_can_be_null=True))
    except pa.ArrowInvalid as exc:
        raise InputProblem(f"not a readable CSV: {str(exc)[:300]}") from None


def _line_numbers(rows: int, ragged: list[int], first: int) -> np.ndarray:
    """The line (or row) number of each row read, counting the ragged lines that were left out between them."""
    numbers, skipped, line = np.empty(rows, dtype=np.int64), sorted(ragged), first
    at = 0
    for i in range(rows):
        while at < len(skipped) and skipped[at] == line:
            line, at = line + 1, at + 1
        numbers[i] = line
        line += 1
    return numbers


def read_input(blob: bytes, source: str, signature: dict, columns: list[str] | None):
    """(rows as float32, their numbers, (carried column names, their values per row), problems, bad row count)."""
    shape = signature["inputs"][0]["shape"][1:]
    features = signature.get("features") or []
    if source == "csv":
        return _csv(blob, features)
    with np.load(io.BytesIO(blob), allow_pickle=False) as archive:
        if "x" not in archive:
            raise InputProblem(f"the NPZ file holds {', '.join(archive.files) or 'nothing'}; it needs an array x")
        x = archive["x"]
        y = archive["y"] if source == "dataset" and "y" in archive else None
    if source == "dataset" and columns and features and columns != features:
        if sorted(columns) != sorted(features):
            missing = [f for f in features if f not in columns]
            raise InputProblem(f"the dataset has no column {', '.join(missing[:6])}; the model's features are "
                               + ", ".join(features[:6]) + (" ..." if len(features) > 6 else ""))
        x = x[:, [columns.index(f) for f in features]]  # the same columns in another order
    if list(x.shape[1:]) != shape:
        raise InputProblem(f"rows of shape {list(x.shape[1:])}; the model takes rows of shape {shape}")
    flat = x.reshape(len(x), -1).astype(np.float64)
    good = np.isfinite(flat).all(axis=1)
    problems = [{"row": int(i) + 1, "message": "holds NaN or Infinity"} for i in np.flatnonzero(~good)[:PROBLEMS]]
    numbers = (np.flatnonzero(good) + 1).tolist()
    classes = signature.get("class_names")
    if y is None:
        carried = ([], [[] for _ in numbers])
    else:  # a dataset's own target, by class name: the output can be checked against it at a glance
        carried = (["target"], [[classes[int(v)] if classes else v] for v in y[good].tolist()])
    return x[good].astype(np.float32), numbers, carried, problems, int((~good).sum())


def _csv(blob: bytes, features: list[str]):
    if not features:
        raise InputProblem("this model takes images: send an NPZ file with an array x, not a CSV")
    try:
        text = blob.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputProblem(f"not UTF-8 text (byte {exc.start})") from None
    reader = csv.reader(io.StringIO(text))
    header = [h.strip() for h in next(reader, [])]
    missing = [f for f in features if f not in header]
    if missing:
        raise InputProblem(f"the CSV has no column {', '.join(missing[:6])}" + (" ..." if len(missing) > 6 else "")
                           + f"; its first line must name the model's features ({', '.join(features[:6])}"
                           + (" ..." if len(features) > 6 else "") + ")")
    at = [header.index(f) for f in features]
    kept = list(range(len(header)))  # every input column, in the input's order, as /predict keeps them
    rows, numbers, carried, problems, bad = [], [], [], [], 0
    for line, record in enumerate(reader, start=2):
        if not record:
            continue
        problem = None
        if len(record) != len(header):
            problem = f"{len(record)} fields; the header has {len(header)}"
        else:
            values = []
            for j, name in zip(at, features, strict=True):
                try:
                    value = float(record[j])
                except ValueError:
                    problem = f"{name}: {record[j][:40]!r} is not a number"
                    break
                if not math.isfinite(value):
                    problem = f"{name}: {record[j][:40]!r} is not finite"
                    break
                values.append(value)
        if problem is not None:
            bad += 1
            if len(problems) < PROBLEMS:
                problems.append({"row": line, "message": problem})
            continue
        rows.append(values)
        numbers.append(line)
        carried.append([record[j] for j in kept])
    x = np.asarray(rows, dtype=np.float32).reshape(len(rows), len(features))
    return x, numbers, ([header[j] for j in kept], carried), problems, bad


def answer_columns(names: list[str], signature: dict, classes: list[str] | None) -> list[str]:
    if "label" in names:
        width = next(o["shape"][1] for o in signature["outputs"] if o["name"] in ("probabilities", "scores"))
        prefix = "p_" if "probabilities" in names else "score_"
        return ["label"] + [prefix + (classes[j] if classes else str(j)) for j in range(width)] + [
            n for n in ("entropy", "mutual_information") if n in names]
    return ["value"] + [n for n in ("variance", "std", "epistemic_std") if n in names]


def answer_rows(results: dict[str, np.ndarray], classes: list[str] | None) -> list[list]:
    if "label" in results:
        scores = results.get("probabilities", results.get("scores"))
        labels = [classes[i] if classes else int(i) for i in results["label"].tolist()]
        extra = [results[n].reshape(len(labels), 1) for n in ("entropy", "mutual_information") if n in results]
        tail = np.concatenate([scores, *extra], axis=1).tolist()
        return [[label, *(f"{p:.6g}" for p in row)] for label, row in zip(labels, tail, strict=True)]
    columns = [results[n].reshape(-1, 1) for n in ("value", "variance", "std", "epistemic_std") if n in results]
    return [[f"{v:.6g}" for v in row] for row in np.concatenate(columns, axis=1).tolist()]
