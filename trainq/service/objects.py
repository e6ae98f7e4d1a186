"""Where the service keeps files (checkpoints, uploaded datasets, model bundles, batch inputs and outputs): a folder
on its own disk (`file://`, the default: the data dir's storage/), or any S3-compatible object store
(`s3://bucket/prefix`, with TRAINQ_S3_ENDPOINT_URL for MinIO, Ceph, R2, ...), so that several service instances
serve the same files. Objects are written once under a key and never changed (a new checkpoint is a new key), so an
instance may keep a local copy of one it reads (onnxruntime opens files; Flask sends them).

An object store also hands workers presigned URLs: a worker PUTs its checkpoints and GETs checkpoints and datasets
straight from the store, not through gunicorn. The service records a checkpoint only after reading it back from the
store: its size and sha256 must be the worker's and its header a trainq checkpoint's, so a failed or cut-off upload
is never recorded as present."""

from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
from pathlib import Path
from urllib.parse import urlparse

log = logging.getLogger(__name__)

PRESIGN_SECONDS = 3600


class StoreError(RuntimeError):
    """The object store failed or refused; the message says which object and why."""


class FileStore:
    """Objects as files under `root` (keys are relative paths)."""

    direct = False  # workers go through the service

    def __init__(self, root: Path):
        self.root = Path(root)
        self.url = self.root.as_uri()

    def path(self, key: str) -> Path:
        return self.root / key

    def put(self, key: str, data: bytes) -> None:
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".part")
        tmp.write_bytes(data)
        tmp.replace(path)  # atomic: a reader never sees half a file

    def put_file(self, key: str, source: Path, move: bool = False) -> None:
        """Store a local file's bytes under `key` without holding them in memory; `move`: the file is not needed
        afterwards, and is renamed into place where it lies on the same file system (no copy)."""
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        if move:
            try:
                Path(source).replace(path)
                return
            except OSError:  # another file system: copied below
                pass
        tmp = path.with_name(path.name + ".part")
        shutil.copyfile(source, tmp)
        tmp.replace(path)

    def get(self, key: str) -> bytes:
        try:
            return self.path(key).read_bytes()
        except FileNotFoundError:
            raise StoreError(f"{key}: no such object") from None

    def local(self, key: str) -> Path:
        """A local file holding the object (here: the object itself); FileNotFoundError when there is none."""
        path = self.path(key)
        if not path.is_file():
            raise FileNotFoundError(key)
        return path

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def size(self, key: str) -> int | None:
        path = self.path(key)
        return path.stat().st_size if path.is_file() else None

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def move(self, source: str, target: str) -> bool:
        """Put the object at `source` under `target` (replacing it) and remove `source`; False if there is none."""
        path = self.path(source)
        if not path.is_file():
            return False
        self.path(target).parent.mkdir(parents=True, exist_ok=True)
        path.replace(self.path(target))
        return True

    def delete_prefix(self, prefix: str) -> None:
        shutil.rmtree(self.path(prefix), ignore_errors=True)

    def keys(self, prefix: str) -> list[str]:
        """The keys under a folder, sorted."""
        folder = self.path(prefix)
        return sorted(str(p.relative_to(self.root)) for p in folder.iterdir() if p.is_file()) if folder.is_dir() \
            else []

    def presign_put(self, key: str) -> str | None:
        return None

    def presign_get(self, key: str, download_name: str | None = None) -> str | None:
        return None

    def problem(self) -> str | None:
        return None if self.root.is_dir() else f"storage folder {self.root} is missing"


class S3Store:
    """Objects in an S3 bucket under a prefix, through boto3; read copies kept in `cache` (keys never change)."""

    direct = True  # workers PUT and GET through presigned URLs

    def __init__(self, url: str, endpoint_url: str | None, cache: Path, region: str | None = None):
        import boto3
        from botocore.config import Config

        parsed = urlparse(url)
        self.url, self.bucket, self.prefix = url, parsed.netloc, parsed.path.strip("/")
        if not self.bucket:
            raise StoreError(f"TRAINQ_STORAGE_URL {url!r} names no bucket: s3://BUCKET/PREFIX")
        config = Config(retries={"max_attempts": 5, "mode": "standard"}, connect_timeout=5, read_timeout=30,
                        s3={"addressing_style": "path"}, signature_version="s3v4")
        self.client = boto3.client("s3", endpoint_url=endpoint_url, config=config,
                                   region_name=region or "us-east-1")
        self.cache = Path(cache)

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def put(self, key: str, data: bytes) -> None:
        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)
        except Exception as exc:  # noqa: BLE001 - botocore's errors, all of them a failed write
            raise StoreError(f"{key}: could not be written to {self.url}: {exc}") from exc

    def put_file(self, key: str, source: Path, move: bool = False) -> None:
        """Store a local file in parts (boto3's managed multipart transfer): memory stays bounded."""
        try:
            self.client.upload_file(str(source), self.bucket, self._key(key))
        except Exception as exc:  # noqa: BLE001
            raise StoreError(f"{key}: could not be written to {self.url}: {exc}") from exc

    def get(self, key: str) -> bytes:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
        except self.client.exceptions.NoSuchKey:
            raise StoreError(f"{key}: no such object") from None
        except Exception as exc:  # noqa: BLE001
            raise StoreError(f"{key}: could not be read from {self.url}: {exc}") from exc

    def local(self, key: str) -> Path:
        path = self.cache / key
        if path.is_file():
            return path
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, delete=False) as tmp:
            try:
                self.client.download_fileobj(self.bucket, self._key(key), tmp)  # in parts: memory stays bounded
            except Exception as exc:  # noqa: BLE001 - a missing key or a store that fails: no local copy
                Path(tmp.name).unlink(missing_ok=True)
                raise FileNotFoundError(f"{key}: {exc}") from None
        Path(tmp.name).replace(path)
        return path

    def exists(self, key: str) -> bool:
        return self.size(key) is not None

    def size(self, key: str) -> int | None:
        try:
            return int(self.client.head_object(Bucket=self.bucket, Key=self._key(key))["ContentLength"])
        except Exception:  # noqa: BLE001 - a 404, or a store that cannot say
            return None

    def delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))
        except Exception:  # noqa: BLE001 - a file left behind is garbage, not a failure of what deleted it
            log.warning("could not delete %s from %s", key, self.url, exc_info=True)
        (self.cache / key).unlink(missing_ok=True)

    def move(self, source: str, target: str) -> bool:
        """Copy `source` to `target` inside the store (no bytes through the service) and delete `source`; False if
        there is no `source`."""
        if not self.exists(source):
            return False
        try:
            self.client.copy_object(Bucket=self.bucket, Key=self._key(target),
                                    CopySource={"Bucket": self.bucket, "Key": self._key(source)})
        except Exception as exc:  # noqa: BLE001
            raise StoreError(f"{source}: could not be copied to {target} in {self.url}: {exc}") from exc
        self.delete(source)
        (self.cache / target).unlink(missing_ok=True)
        return True

    def delete_prefix(self, prefix: str) -> None:
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket,
                                                                          Prefix=self._key(prefix.rstrip("/") + "/"))
            for page in pages:
                keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
                if keys:
                    self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": keys})
        except Exception:  # noqa: BLE001
            log.warning("could not delete %s/ from %s", prefix, self.url, exc_info=True)
        shutil.rmtree(self.cache / prefix, ignore_errors=True)

    # A file in parts (a dataset upload): S3's multipart upload, the parts PUT by the client through presigned URLs
    # or through the service; S3 keeps them until the upload completes or is aborted.

    def start_parts(self, key: str) -> str:
        try:
            return self.client.create_multipart_upload(Bucket=self.bucket, Key=self._key(key))["UploadId"]
        except Exception as exc:  # noqa: BLE001
            raise StoreError(f"{key}: could not start an upload in parts at {self.url}: {exc}") from exc

    def put_part(self, key: str, upload_id: str, number: int, source: Path) -> None:
        try:
            with open(source, "rb") as body:
                self.client.upload_part(Bucket=self.bucket, Key=self._key(key), UploadId=upload_id,
                                        PartNumber=number, Body=body)
        except Exception as exc:  # noqa: BLE001
            raise StoreError(f"{key}: part {number} could not be written to {self.url}: {exc}") from exc

    def presign_part(self, key: str, upload_id: str, number: int) -> str:
        return self.client.generate_presigned_url(
            "upload_part", Params={"Bucket": self.bucket, "Key": self._key(key), "UploadId": upload_id,
                                   "PartNumber": number}, ExpiresIn=PRESIGN_SECONDS)

    def finish_parts(self, key: str, upload_id: str) -> int:
        """Join the parts S3 holds, in order; the number of parts."""
        try:
            parts = []
            for page in self.client.get_paginator("list_parts").paginate(Bucket=self.bucket, Key=self._key(key),
                                                                          UploadId=upload_id):
                parts += [{"PartNumber": p["PartNumber"], "ETag": p["ETag"]} for p in page.get("Parts", [])]
            if parts:
                self.client.complete_multipart_upload(Bucket=self.bucket, Key=self._key(key), UploadId=upload_id,
                                                      MultipartUpload={"Parts": sorted(parts, key=lambda p:
                                                                                       p["PartNumber"])})
            return len(parts)
        except Exception as exc:  # noqa: BLE001
            raise StoreError(f"{key}: the upload's parts could not be joined at {self.url}: {exc}") from exc

    def abort_parts(self, key: str, upload_id: str) -> None:
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=self._key(key), UploadId=upload_id)
        except Exception:  # noqa: BLE001 - parts left behind are garbage, not a failure of what aborted them
            log.warning("could not abort the upload of %s at %s", key, self.url, exc_info=True)

    def presign_put(self, key: str) -> str:
        return self.client.generate_presigned_url("put_object", Params={"Bucket": self.bucket, "Key": self._key(key)},
                                                  ExpiresIn=PRESIGN_SECONDS)

    def presign_get(self, key: str, download_name: str | None = None) -> str:
        params = {"Bucket": self.bucket, "Key": self._key(key)}
        if download_name:
            params["ResponseContentDisposition"] = f'attachment; filename="{download_name}"'
        return self.client.generate_presigned_url("get_object", Params=params, ExpiresIn=PRESIGN_SECONDS)

    def problem(self) -> str | None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
            return None
        except Exception as exc:  # noqa: BLE001
            return f"object store {self.url}: {exc}"


Store = FileStore | S3Store


def open_store(url: str | None, endpoint_url: str | None, storage_dir: Path) -> Store:
    """The store TRAINQ_STORAGE_URL names: file:///path, s3://bucket/prefix, or (unset) the data dir's storage/."""
    if not url:
        return FileStore(storage_dir)
    scheme = urlparse(url).scheme
    if scheme == "file":
        return FileStore(Path(urlparse(url).path))
    if scheme == "s3":
        return S3Store(url, endpoint_url, storage_dir / "cache")
    raise StoreError(f"TRAINQ_STORAGE_URL {url!r}: use file:///path or s3://bucket/prefix")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# Keys: one place that says where each kind of file lives.


def checkpoint_key(job_id: str, checkpoint_id: str) -> str:
    return f"checkpoints/{job_id}/{checkpoint_id}.safetensors"


def dataset_key(dataset_id: str, ext: str = "npz") -> str:
    return f"datasets/{dataset_id}.{ext}"


def upload_key(upload_id: str, part: int | None = None) -> str:
    """A dataset upload in parts: each part, or (no part) the assembled file, before it becomes a version."""
    return f"uploads/{upload_id}/{'data' if part is None else f'part-{part:05d}'}"


def model_key(version_id: str, name: str = "") -> str:
    return f"models/{version_id}/{name}" if name else f"models/{version_id}"


def batch_key(batch_id: str, name: str = "") -> str:
    return f"batches/{batch_id}/{name}" if name else f"batches/{batch_id}"


def staging_key(kind: str, owner_id: str, token: str, name: str) -> str:
    """Where a claimed piece of work (an export, a batch) PUTs a file straight into the store: a place of that claim
    alone (named by its token's hash), moved into place at the claim's fenced finish. A claim that was fenced by a
    later one can still PUT with its URL, but only into its own staging place, which nothing ever moves."""
    return f"staging/{kind}/{owner_id}/{hashlib.sha256(token.encode()).hexdigest()[:24]}/{name}"
