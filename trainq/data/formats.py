"""What a file is, read from its first bytes, and tables read from it with pyarrow.

A table is read in record batches, so a file larger than memory can be profiled or scanned with a bounded budget.
Every problem is a DataError whose message names the row, column or file at fault and says how to fix it.
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Iterator

TABLES = ("csv", "tsv", "parquet", "jsonl")
FORMATS = TABLES + ("npz", "zip", "tar")
SNIFF_BYTES = 64 * 1024  # how much of a file `sniff` needs
BLOCK_BYTES = 4 << 20  # CSV and JSON Lines are parsed this much at a time


class DataError(ValueError):
    """The data cannot be used as it is; the message says where (row, column, file) and how to fix it."""


def sniff(head: bytes) -> str:
    """The format of a file from its first bytes (SNIFF_BYTES of them, or all of a smaller file)."""
    if head[:4] == b"PAR1":
        return "parquet"
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "zip"  # an NPZ is a zip of .npy files: `zip_kind` tells them apart
    if head[:2] == b"\x1f\x8b" or head[257:262] == b"ustar":
        return "tar"
    if not head.strip():
        raise DataError("the file is empty; upload a CSV, TSV, Parquet, JSON Lines, NPZ file or a zip/tar of images")
    if b"\x00" in head:
        raise DataError("not a format trainq reads (binary data that is not Parquet, NPZ, zip or tar); upload a CSV, "
                        "TSV, Parquet, JSON Lines, NPZ file or a zip/tar of class folders of images")
    text = head.decode("utf-8-sig", errors="replace").lstrip()
    if text.startswith("{"):
        return "jsonl"
    if text.startswith("["):
        raise DataError("a JSON array is not read; write one JSON object per line (JSON Lines)")
    first = text.split("\n", 1)[0]
    return "tsv" if first.count("\t") > first.count(",") else "csv"


def sniff_file(path: Path) -> str:
    with open(path, "rb") as f:
        return sniff(f.read(SNIFF_BYTES))


def zip_kind(path: Path) -> str:
    """npz for a zip of .npy arrays, else zip (an archive of images)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            names = [n for n in z.namelist() if not n.endswith("/")]
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"not a readable zip file: {exc}") from None
    return "npz" if names and all(n.endswith(".npy") for n in names) else "zip"


# ---------------------------------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------------------------------


def _csv_options(fmt: str, types: dict | None):
    import pyarrow.csv as pcsv

    parse = pcsv.ParseOptions(delimiter="\t" if fmt == "tsv" else ",", newlines_in_values=True)
    convert = pcsv.ConvertOptions(strings_can_be_null=True, column_types=types or {})
    return pcsv.ReadOptions(block_size=BLOCK_BYTES), parse, convert


_COLUMN_NUMBER = re.compile(r"In CSV column #(\d+): (?:Row #\d+: )?CSV conversion error to (\w+): invalid value",
                            re.S)


RESTART = None  # what `batches` yields when what it yielded so far is to be forgotten: it starts again


PARALLEL_FROM = 64 << 20  # a CSV file larger than this is parsed in chunks on two threads (pyarrow frees the GIL)
PARALLEL_CHUNK = 4 << 20


def _csv_batches(source, fmt: str) -> Iterator:
    """A CSV's record batches, streamed. A column's type comes from the first block (or chunk), and a later value
    that does not fit it ('x' in a column of numbers) has the file read again from the start with that column as
    text (as reading the whole file at once would type it), after a RESTART. A large file without quotes is parsed
    in chunks on two threads, in order; one with quotes (a field may hold a newline) a block after another."""
    import pyarrow as pa

    types: dict[str, object] = {}
    while True:
        try:
            parallel = isinstance(source, (str, Path)) and Path(source).stat().st_size > PARALLEL_FROM
            for batch in (_csv_chunked(source, fmt, types) if parallel else _csv_streamed(source, fmt, types)):
                if batch is RESTART:  # quotes: read front to back instead
                    yield RESTART
                    yield from _csv_streamed(source, fmt, types)
                    return
                yield batch
            return
        except pa.ArrowInvalid as exc:
            found = _COLUMN_NUMBER.search(str(exc))
            column = _column_named(source, fmt, int(found.group(1))) if found else None
            if column is None or column in types:
                raise _csv_error(exc, source) from None
            types[column] = pa.string()
            yield RESTART


def _column_named(source, fmt: str, index: int) -> str | None:
    """The name of a CSV's column by its position, from the header."""
    import csv

    if hasattr(source, "seek"):
        source.seek(0)
        line = source.readline().decode("utf-8-sig", errors="replace")
    else:
        with open(source, "rb") as f:
            line = f.readline().decode("utf-8-sig", errors="replace")
    names = next(csv.reader([line], delimiter="\t" if fmt == "tsv" else ","), [])
    return names[index].strip() if index < len(names) else None


def _csv_streamed(source, fmt: str, types: dict) -> Iterator:
    import pyarrow.csv as pcsv

    read, parse, convert = _csv_options(fmt, types)
    if hasattr(source, "seek"):
        source.seek(0)
    yield from pcsv.open_csv(source, read_options=read, parse_options=parse, convert_options=convert)


def _csv_chunked(path, fmt: str, types: dict) -> Iterator:
    """A large CSV in chunks of whole lines, the first parsed alone to fix every column's type, the rest two at a
    time on a thread pool, handed over in file order (at most two chunks in memory besides the one handed over).
    A chunk holding a quote yields RESTART: quoted fields may hold newlines, which chunks of lines would cut."""
    import io
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    import pyarrow.csv as pcsv

    read, parse, _ = _csv_options(fmt, types)
    read = pcsv.ReadOptions(block_size=BLOCK_BYTES, use_threads=False)

    def parsed(data: bytes, fixed: dict):
        convert = pcsv.ConvertOptions(strings_can_be_null=True, column_types=fixed)
        return pcsv.read_csv(io.BytesIO(data), read_options=read, parse_options=parse, convert_options=convert)

    with open(path, "rb") as f, ThreadPoolExecutor(max_workers=2, thread_name_prefix="trainq-csv") as pool:
        header = f.readline()
        if b'"' in header:
            yield RESTART
            return
        fixed = dict(types)
        pending: deque = deque()
        first = True
        while chunk := f.read(PARALLEL_CHUNK):
            chunk += f.readline()  # to the end of its last line
            if b'"' in chunk:
                for future in pending:
                    future.cancel()
                yield RESTART
                return
            if first:  # its types are every later chunk's
                table = parsed(header + chunk, fixed)
                fixed.update({field.name: field.type for field in table.schema})
                yield from table.to_batches()
                first = False
                continue
            pending.append(pool.submit(parsed, header + chunk, fixed))
            if len(pending) >= 2:
                yield from pending.popleft().result().to_batches()
        while pending:
            yield from pending.popleft().result().to_batches()


def _csv_error(exc: Exception, source) -> DataError:
    """pyarrow's parse error as a DataError naming the line (the header is line 1)."""
    message = str(exc)
    ragged = re.search(r"Expected (\d+) columns, got (\d+): (.*)", message, re.S)
    if ragged is not None:
        text = ragged.group(3).strip()
        line = _line_of(source, text[:200])
        where = f"line {line}" if line else "a row"
        return DataError(f"{where}: {ragged.group(2)} fields, the header has {ragged.group(1)} ({text[:80]!r}); "
                         "quote fields that hold the delimiter, or fix the row")
    if "Empty CSV file" in message:
        return DataError("the file is empty; a CSV needs a header row and data rows")
    return DataError(f"not a readable CSV: {message[:300]}")


def _line_of(source, text: str) -> int | None:
    """The 1-based line number of the first line that begins with `text`, for an error message."""
    if not text:
        return None
    probe = text[:60].encode()
    if hasattr(source, "seek"):
        source.seek(0)
        return next((n for n, line in enumerate(iter(source.readline, b""), 1) if line.startswith(probe)), None)
    with open(source, "rb") as f:
        return next((n for n, line in enumerate(f, 1) if line.startswith(probe)), None)


def _json_batches(source) -> Iterator:
    import pyarrow as pa
    import pyarrow.json as pjson

    try:
        reader = pjson.open_json(source, read_options=pjson.ReadOptions(block_size=BLOCK_BYTES))
        yield from reader
    except pa.ArrowInvalid as exc:
        message = str(exc)
        changed = re.search(r"Column\((/[^)]*)\) changed from (\w+) to (\w+) in row (\d+)", message)
        if changed is not None:
            raise DataError(f"row {int(changed.group(4)) + 1}, field {changed.group(1)[1:]!r}: {changed.group(3)} "
                            f"where earlier rows have {changed.group(2)}; give a field one type in every row "
                            "(quote the numbers to read it as text)") from None
        raise DataError(f"not readable JSON Lines: {message[:300]}; write one JSON object per line") from None


def _parquet_batches(source, budget_bytes: int | None) -> Iterator:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        file = pq.ParquetFile(source)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"not a readable Parquet file: {str(exc)[:300]}") from None
    meta = file.metadata
    if budget_bytes is not None:
        for g in range(meta.num_row_groups):
            size = meta.row_group(g).total_byte_size
            if size > budget_bytes:
                raise DataError(f"row group {g} holds {size / 2**20:.0f} MiB uncompressed, more than the memory "
                                f"budget of {budget_bytes / 2**20:.0f} MiB (TRAINQ_DATA_MEMORY_MB); write the file "
                                "with smaller row groups (pyarrow: row_group_size=100_000)")
    try:
        yield from file.iter_batches(batch_size=65_536)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"the Parquet file could not be read: {str(exc)[:300]}") from None


def batches(source, fmt: str, budget_bytes: int | None = None) -> Iterator:
    """The record batches of a table file (a path or a binary file object), streamed; checked to be flat. A
    RESTART among them means: forget the batches so far, they come again with a column typed otherwise."""
    if fmt not in TABLES:
        raise ValueError(f"{fmt} is not a table format")
    source = str(source) if isinstance(source, Path) else source
    it = (_csv_batches(source, fmt) if fmt in ("csv", "tsv") else _json_batches(source) if fmt == "jsonl"
          else _parquet_batches(source, budget_bytes))
    checked = False
    for batch in it:
        if batch is RESTART:
            yield RESTART
            continue
        if not checked:
            check_schema(batch.schema, fmt)
            checked = True
        yield batch
    if not checked and fmt not in ("csv", "tsv"):  # a CSV of a header alone: its consumer says what is missing
        raise DataError("the file holds no rows")


def check_schema(schema, fmt: str) -> None:
    """Refuse what trainq cannot train on as a column: nested values, repeated or empty names."""
    import pyarrow as pa

    names = schema.names
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise DataError(f"the column name {twice[0]!r} appears twice; give every column its own name")
    for i, f in enumerate(schema):
        if not f.name.strip():
            raise DataError(f"column {i + 1} has no name; name every column in the header")
        if pa.types.is_nested(f.type):
            what = "objects or lists" if fmt == "jsonl" else f"nested values ({f.type})"
            raise DataError(f"column {f.name!r} holds {what}; trainq reads flat columns of numbers and text: "
                            "flatten it into columns of its own before uploading")


def read_table(source, fmt: str, budget_bytes: int | None = None):
    """A whole table file as one pyarrow Table."""
    import pyarrow as pa

    parts: list = []
    for batch in batches(source, fmt, budget_bytes):
        parts = [] if batch is RESTART else parts + [batch]
    if not parts:
        raise DataError("the file holds no rows; a CSV needs a header row and data rows")
    return pa.Table.from_batches(parts).combine_chunks()


def prefetched(items: Iterator, depth: int = 2) -> Iterator:
    """The items of an iterator made by a thread of its own, up to `depth` ahead of their consumer: a CSV parses its
    next block (pyarrow, without the GIL) while the last one is counted. An error on that thread is raised here; a
    consumer that stops early stops the thread."""
    import queue
    import threading

    ahead: queue.Queue = queue.Queue(depth)
    stop = threading.Event()
    done = object()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        ahead.put((item, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            ahead.put((done, None))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            ahead.put((done, exc))

    thread = threading.Thread(target=produce, name="trainq-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item, error = ahead.get()
            if item is done:
                if error is not None:
                    raise error
                return
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)
