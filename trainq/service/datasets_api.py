"""Uploaded datasets over HTTP: a name holds immutable versions 1, 2, ...; upload (whole, or in parts for files of any
size), list, show with the profile, sample images, delete. A spec names one with {name: upload, upload: NAME} (the
latest version, pinned at submission) or NAME@VERSION."""

from __future__ import annotations

import io
import re
from pathlib import Path

from flask import Blueprint, jsonify, request, send_file
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from trainq.data.archive import Limits
from trainq.models.spec import UPLOAD_NAME
from trainq.service.auth import audit, principal, require_user
from trainq.service.context import db, services
from trainq.service.http import fail, read_body
from trainq.service.lookups import dataset_json, get_dataset, visible_datasets
from trainq.service.objects import StoreError, upload_key
from trainq.service.datasets import users_of
from trainq.service.tables import Dataset, DatasetUpload, new_id
from trainq.service.uploads import Received, UploadError, discard, examine, receive, receive_all

bp = Blueprint("datasets_api", __name__, url_prefix="/api/v1/datasets")


@bp.before_request
def authenticate():
    require_user()


def upload_folder() -> Path:
    return services().settings.data_dir / "tmp"


def limits() -> Limits:
    return Limits(max_bytes=services().settings.max_archive_mb * 2**20)


def upload_args(values=None) -> tuple[str, str | None, str | None]:
    """name, target and task of an upload, from the query string (or a JSON body's fields), checked."""
    values = request.args if values is None else values
    name = values.get("name", "")
    if not isinstance(name, str):
        name = ""
    if not re.fullmatch(UPLOAD_NAME, name):
        fail(422, "validation", "name must be 1-64 letters, digits, '_', '.', '-' (no '@': versions are numbered "
                                "by trainq)", errors=[{"path": "name", "message": f"must match {UPLOAD_NAME}"}])
    task = values.get("task")
    if task not in (None, "classification", "regression"):
        fail(422, "validation", "task must be classification or regression",
             errors=[{"path": "task", "message": "classification or regression"}])
    target = values.get("target") or None
    if target is not None and not isinstance(target, str):
        fail(422, "validation", "target must be a column's name", errors=[{"path": "target", "message": "a string"}])
    return name, target, task


def received_body() -> Received:
    """The request's file on local disk: a form's one file part (`curl -F file=@train.csv`), or the body itself
    (`--data-binary @train.csv`), streamed."""
    if request.mimetype == "multipart/form-data":
        files = list(request.files.values())
        if len(files) != 1:
            fail(400, "bad_request", f"a form upload must carry exactly one file, got {len(files)}; or send the file "
                                     "itself as the body: curl --data-binary @train.csv",
                 errors=[{"path": "file", "message": "one file part"}])
        return receive(files[0].stream, upload_folder())
    return receive(request.stream, upload_folder())


def create_version(received: Received, name: str, target: str | None, task: str | None,
                   stored_at: str | None = None):
    """The dataset version of a received file: the existing one when the same bytes were uploaded under this name
    before (200), else the next version (201). The file is examined and profiled first; nothing is stored for one
    that does not parse (422 naming the row, column or file at fault). `stored_at`: the file is in storage already
    there (an upload in parts to an object store), and is moved into place rather than written again."""
    session = db()
    owner = principal().id
    same = session.scalar(select(Dataset).where(Dataset.owner_id == owner, Dataset.name == name,
                                                Dataset.sha256 == received.sha256).order_by(Dataset.version))
    if same is not None:
        discard(received.path)
        return jsonify({**dataset_json(same), "existing": True}), 200
    settings = services().settings
    stored = None
    try:
        try:
            found = examine(received.path, target=target, task=task, max_rows=settings.max_dataset_rows,
                            limits=limits(), max_pixels=settings.max_image_pixels,
                            budget_bytes=settings.data_memory_mb * 2**20)
        except UploadError as exc:
            fail(422, "bad_dataset", str(exc), errors=[{"path": "(file)", "message": str(exc)}])
        stored = found.stored
        for attempt in range(3):  # two uploads of one name at once: the loser takes the next number
            version = (session.scalar(select(func.max(Dataset.version)).where(Dataset.owner_id == owner,
                                                                              Dataset.name == name)) or 0) + 1
            row = Dataset(owner_id=owner, name=name, version=version, kind=found.kind, rows=found.rows,
                          shape=found.shape, classes=found.classes, class_names=found.class_names,
                          columns=found.columns, source=found.source, target=found.target, profile=found.profile,
                          size=received.size, sha256=received.sha256)
            session.add(row)
            try:
                session.flush()
                break
            except IntegrityError:
                session.rollback()
        else:
            fail(409, "busy", f"versions of {name!r} are being uploaded at once; upload again")
        try:
            if stored_at is not None and stored == received.path:
                services().store.move(stored_at, row.key)
            else:
                services().store.put_file(row.key, stored, move=True)  # the upload's temporary file: not kept
        except StoreError as exc:
            session.rollback()
            fail(503, "store_unavailable", f"{exc}; upload it again later")
        audit("dataset_upload", f"dataset:{row.id}", name=name, version=version, rows=row.rows)
        try:
            session.commit()
        except Exception:
            services().store.delete(row.key)
            raise
        return jsonify(dataset_json(row)), 201
    finally:
        discard(received.path, stored)


@bp.post("")
def upload():
    if request.mimetype == "application/json":  # {"name", "url": "s3://bucket/key-or-prefix/", "target", "task"}
        return register_url()
    name, target, task = upload_args()
    return create_version(received_body(), name, target, task)


def register_url():
    """Data already in a bucket, made a version without passing through the client: one object (any format
    trainq reads), or every table under a prefix (ending in /), read in order and written as one Parquet file."""
    from urllib.parse import urlparse

    body = read_body()
    if not isinstance(body, dict) or not isinstance(body.get("url"), str):
        fail(422, "validation", "send {\"name\": NAME, \"url\": \"s3://bucket/key\"} (or the file as the body)",
             errors=[{"path": "url", "message": "required: an s3:// URL"}])
    name, target, task = upload_args(body)
    url = urlparse(body["url"])
    if url.scheme != "s3" or not url.netloc:
        fail(422, "validation", "url must be s3://BUCKET/KEY or s3://BUCKET/PREFIX/ (a bucket this service's "
                                "credentials read)", errors=[{"path": "url", "message": "not an s3:// URL"}])
    try:
        received = fetch_s3(url.netloc, url.path.lstrip("/"))
    except UploadError as exc:
        fail(422, "bad_dataset", str(exc), errors=[{"path": "url", "message": str(exc)}])
    except StoreError as exc:
        fail(502, "store_unavailable", str(exc), errors=[{"path": "url", "message": str(exc)}])
    return create_version(received, name, target, task)


def fetch_s3(bucket: str, key: str) -> Received:
    """An object (or a prefix's tables, as one Parquet file) copied to local disk, hashed on the way."""
    store = services().store
    client = store.client if getattr(store, "client", None) is not None else s3_client()
    try:
        if not key.endswith("/") and key:
            with open_s3(client, bucket, key) as stream:
                return receive(stream, upload_folder())
        keys = []
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key):
            keys += [o["Key"] for o in page.get("Contents", []) if not o["Key"].endswith("/")]
    except UploadError:
        raise
    except Exception as exc:  # noqa: BLE001 - botocore's errors: a missing bucket or key, refused credentials
        raise StoreError(f"s3://{bucket}/{key}: {exc}") from exc
    if not keys:
        raise UploadError(f"nothing under s3://{bucket}/{key}")
    return joined_tables(client, bucket, sorted(keys))


def s3_client():
    import boto3

    return boto3.client("s3", endpoint_url=services().settings.s3_endpoint_url)


def open_s3(client, bucket: str, key: str):
    try:
        return client.get_object(Bucket=bucket, Key=key)["Body"]
    except Exception as exc:  # noqa: BLE001
        raise StoreError(f"s3://{bucket}/{key}: {exc}") from exc


def joined_tables(client, bucket: str, keys: list[str]) -> Received:
    """Tables under a prefix (shards of one table: the same columns) written into one Parquet file, a batch at a
    time; anything that is not a table is refused by its key."""
    import pyarrow.parquet as pq

    folder = upload_folder()
    out = folder / f"joined-{new_id()}.parquet"
    writer, first = None, None
    try:
        for key in keys:
            with open_s3(client, bucket, key) as stream:
                part = receive(stream, folder)
            converted = None
            try:
                converted = as_parquet(part.path, f"s3://{bucket}/{key}")
                for batch in pq.ParquetFile(converted).iter_batches(batch_size=65_536):
                    if writer is None:
                        writer, first = pq.ParquetWriter(out, batch.schema), key
                    elif batch.schema != writer.schema:
                        try:
                            batch = batch.cast(writer.schema)
                        except Exception:  # noqa: BLE001 - pyarrow's cast errors: the columns differ
                            raise UploadError(f"s3://{bucket}/{key} has other columns than {first} "
                                              f"({', '.join(batch.schema.names[:8])})") from None
                    writer.write_batch(batch)
            finally:
                discard(part.path, converted)
        if writer is None:
            raise UploadError("the tables under the prefix hold no rows")
        writer.close()
        writer = None
        with open(out, "rb") as f:
            return receive(f, folder)
    finally:
        if writer is not None:
            writer.close()
        discard(out)


def as_parquet(path: Path, name: str) -> Path:
    """A table file as Parquet beside it, streamed (a CSV column retyped mid-way starts the file over)."""
    import pyarrow.parquet as pq

    from trainq.data.formats import RESTART, TABLES, batches, sniff_file

    fmt = sniff_file(path)
    if fmt not in TABLES:
        raise UploadError(f"{name} is {fmt}, not a table: a prefix is read as shards of one table (name one object "
                          "to register an archive)")
    out = path.with_name(path.name + ".parquet")
    writer = None
    try:
        for batch in batches(path, fmt):
            if batch is RESTART or writer is None:
                if writer is not None:
                    writer.close()
                writer = None if batch is RESTART else pq.ParquetWriter(out, batch.schema)
            if batch is not RESTART:
                writer.write_batch(batch)
    finally:
        if writer is not None:
            writer.close()
    if not out.exists():
        raise UploadError(f"{name} holds no rows")
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Uploads in parts: a file of any size with bounded memory on both ends (`trainq dataset upload`)
# ---------------------------------------------------------------------------------------------------------------------

MAX_PARTS = 10_000  # S3's limit


def part_bytes() -> int:
    """The size of each part but the last: 32 MiB, or less where the body limit is lower (S3 wants 5 MiB at least)."""
    return min(32 * 2**20, services().settings.max_body_bytes)


@bp.post("/uploads")
def start_upload():
    """Start an upload in parts; PUT each part to .../parts/N (1, 2, ...; or, where `direct`, to the URL that
    .../parts/N/url gives: straight into the object store), then POST .../complete."""
    name, target, task = upload_args()
    session, store = db(), services().store
    up = DatasetUpload(owner_id=principal().id, name=name, target=target, task=task)
    session.add(up)
    session.flush()
    if store.direct:
        try:
            up.multipart_id = store.start_parts(upload_key(up.id))
        except StoreError as exc:
            session.rollback()
            fail(503, "store_unavailable", f"{exc}; try again later")
    session.commit()
    return jsonify({"id": up.id, "name": name, "part_bytes": part_bytes(), "max_parts": MAX_PARTS,
                    "direct": bool(store.direct)}), 201


def my_upload(upload_id: str) -> DatasetUpload:
    up = db().get(DatasetUpload, upload_id)
    if up is None or up.owner_id != principal().id:
        fail(404, "not_found", f"no upload {upload_id} under way; start one with POST /api/v1/datasets/uploads")
    return up


def part_number(number: int) -> int:
    if not 1 <= number <= MAX_PARTS:
        fail(422, "validation", f"part numbers run from 1 to {MAX_PARTS}",
             errors=[{"path": "part", "message": f"{number} is not in 1..{MAX_PARTS}"}])
    return number


@bp.put("/uploads/<hexid:upload_id>/parts/<int:number>")
def put_part(upload_id: str, number: int):
    up, number, store = my_upload(upload_id), part_number(number), services().store
    received = receive(request.stream, upload_folder())
    try:
        if up.multipart_id:
            store.put_part(upload_key(up.id), up.multipart_id, number, received.path)
        else:
            store.put_file(upload_key(up.id, number), received.path)
    except StoreError as exc:
        fail(503, "store_unavailable", f"{exc}; send the part again")
    finally:
        discard(received.path)
    return jsonify({"part": number, "size": received.size, "sha256": received.sha256})


@bp.post("/uploads/<hexid:upload_id>/parts/<int:number>/url")
def part_url(upload_id: str, number: int):
    up, number = my_upload(upload_id), part_number(number)
    if not up.multipart_id:
        fail(409, "not_direct", f"this service keeps files itself: PUT the part to /api/v1/datasets/uploads/{up.id}"
                                f"/parts/{number}")
    return jsonify({"url": services().store.presign_part(upload_key(up.id), up.multipart_id, number)})


@bp.post("/uploads/<hexid:upload_id>/complete")
def complete_upload(upload_id: str):
    """Join the parts into one file and make it a version, as a whole upload is (201, or 200 for the same bytes
    as an existing version; 422 naming the problem). The parts are gone afterwards, whatever the answer."""
    up, store = my_upload(upload_id), services().store
    name, target, task, multipart = up.name, up.target, up.task, up.multipart_id
    key = upload_key(up.id)
    try:
        if multipart:
            if not store.finish_parts(key, multipart):
                fail(422, "no_parts", "no part was uploaded", errors=[{"path": "parts", "message": "none"}])
            with open(store.local(key), "rb") as joined:
                received = receive(joined, upload_folder())
        else:
            parts = store.keys(f"uploads/{up.id}")
            numbers = [int(k.rsplit("-", 1)[1]) for k in parts]
            if not numbers:
                fail(422, "no_parts", "no part was uploaded", errors=[{"path": "parts", "message": "none"}])
            gap = next((n for n, found in enumerate(numbers, 1) if n != found), None)
            if gap is not None:
                fail(422, "missing_part", f"part {gap} is missing; PUT it, then complete again",
                     errors=[{"path": f"parts[{gap}]", "message": "missing"}])
            files = [open(store.local(k), "rb") for k in parts]
            try:
                received = receive_all(files, upload_folder())
            finally:
                for f in files:
                    f.close()
        answer = create_version(received, name, target, task, stored_at=key if multipart else None)
    except StoreError as exc:
        fail(503, "store_unavailable", f"{exc}; complete the upload again later")
    finally:
        session = db()
        session.rollback()
        gone = session.get(DatasetUpload, upload_id)
        if gone is not None:
            session.delete(gone)
            session.commit()
            store.delete_prefix(f"uploads/{upload_id}")
    return answer


@bp.delete("/uploads/<hexid:upload_id>")
def abandon_upload(upload_id: str):
    up, store = my_upload(upload_id), services().store
    if up.multipart_id:
        store.abort_parts(upload_key(up.id), up.multipart_id)
    store.delete_prefix(f"uploads/{up.id}")
    db().delete(up)
    db().commit()
    return "", 204


@bp.get("")
def list_datasets():
    query = visible_datasets()
    if request.args.get("name"):
        query = query.where(Dataset.name == request.args["name"])
    rows = db().scalars(query.order_by(Dataset.name, Dataset.version.desc())).all()
    return jsonify({"datasets": [dataset_json(d) for d in rows]})


@bp.get("/<path:ref>")
def show(ref: str):
    d = get_dataset(ref)
    return jsonify({**dataset_json(d), "used_by": users_of(db(), d)})


@bp.get("/<path:ref>/samples/<int:index>")
def sample(ref: str, index: int):
    """One of an image dataset's sample images (the profile's, in class order), as a PNG thumbnail."""
    d = get_dataset(ref)
    files = [f for names in (d.profile or {}).get("samples", {}).values() for f in names]
    if d.kind != "images" or not 0 <= index < len(files):
        fail(404, "not_found", f"{d.ref} has no sample image {index}")
    from trainq.data.archive import entries
    from trainq.data.images import open_image

    try:
        path = services().store.local(d.key)
    except FileNotFoundError:
        fail(404, "not_found", "the dataset's file is gone")
    wanted = files[index]
    blob = next((data for name, data in entries(path, limits()) if name == wanted), None)
    if blob is None:
        fail(404, "not_found", f"{wanted} is not in the archive")
    image = open_image(blob, services().settings.max_image_pixels)
    image.thumbnail((96, 96))
    out = io.BytesIO()
    image.convert("RGB" if image.mode not in ("L", "RGB") else image.mode).save(out, "PNG")
    out.seek(0)
    response = send_file(out, mimetype="image/png")
    response.headers["Cache-Control"] = "private, max-age=86400"  # a version never changes
    return response


@bp.delete("/<path:ref>")
def delete(ref: str):
    d = get_dataset(ref)
    used = users_of(db(), d)
    if used["jobs"] or used["models"]:
        names = [f"job {j['id']} ({j['name']})" for j in used["jobs"][:5]] + [
            f"model {m['model']} version {m['version']}" for m in used["models"][:5]]
        fail(409, "in_use", f"{d.ref} was used by {', '.join(names)}; delete those first (a run names the data it "
                            "was trained on)", used_by=used)
    session = db()
    session.delete(d)
    audit("dataset_delete", f"dataset:{d.id}", name=d.name, version=d.version)
    session.commit()
    services().store.delete(d.key)
    return "", 204

