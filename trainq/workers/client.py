"""The worker's client of the service API: a worker token, retries with backoff, nothing lost on a blip."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import requests

log = logging.getLogger(__name__)


class Refused(Exception):
    """The service answered with a 4xx: retrying the same request will not help."""

    def __init__(self, status: int, body: Any):
        self.status, self.body = status, body
        super().__init__(f"{status}: {body}")


class Fenced(Refused):
    """409: this attempt is no longer the job's live attempt."""


class ServiceClient:
    def __init__(self, base_url: str, worker_token: str, *, retry_for: float = 300.0, timeout: float = 30.0):
        self.base = base_url.rstrip("/")
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"Bearer {worker_token}"
        self.store = requests.Session()  # presigned object-store URLs: they carry their own signature, not our token
        self.retry_for, self.timeout = retry_for, timeout  # seconds

    def call(self, method: str, path: str, *, retry_for: float | None = None, attempt_token: str | None = None,
             **kwargs) -> requests.Response:
        """Send a request, retrying connection errors and 5xx with exponential backoff for up to retry_for seconds."""
        patience = self.retry_for if retry_for is None else retry_for
        deadline = time.monotonic() + patience
        headers = kwargs.pop("headers", {})
        if attempt_token:
            headers["X-Trainq-Attempt-Token"] = attempt_token
        presigned = path.startswith(("http://", "https://"))  # an object store's URL, signed for this one request
        http, url = (self.store, path) if presigned else (self.http, self.base + path)
        if presigned:
            headers.pop("X-Trainq-Attempt-Token", None)
        delay = 0.1
        while True:
            try:
                response = http.request(method, url, headers=headers, timeout=self.timeout, **kwargs)
                if response.status_code < 500 and response.status_code != 429:
                    break
                problem = f"HTTP {response.status_code}"
            except requests.RequestException as exc:
                problem = _problem(exc, url)
            shown = path.split("?", 1)[0]  # never a presigned URL's signature in a log
            if time.monotonic() + delay > deadline:
                raise ConnectionError(f"{method} {shown} failed for {patience:.0f}s: {problem}")
            log.warning("%s %s: %s; retrying in %.1fs", method, shown, problem, delay)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
        if response.status_code == 409:
            raise Fenced(409, _body(response))
        if response.status_code >= 400:
            raise Refused(response.status_code, _body(response))
        return response

    def claim(self, job_id: str, worker: str, kind: str | None = None, gpus: int | None = None,
              layers: dict | None = None) -> dict:
        return self.call("POST", f"/api/v1/worker/jobs/{job_id}/claim",
                         json={"worker": worker, "kind": kind, "gpus": gpus, "layers": layers or {}}).json()

    def download(self, path: str, attempt_token: str) -> bytes:
        """A file through the service (a path) or straight from the object store (a presigned URL)."""
        return self.call("GET", path, attempt_token=attempt_token).content

    def download_to(self, path: str, attempt_token: str, target: Path) -> Path:
        """download() into a local file, streamed (a dataset can be larger than memory); atomic."""
        target.parent.mkdir(parents=True, exist_ok=True)
        response = self.call("GET", path, attempt_token=attempt_token, stream=True)
        tmp = target.with_name(f"{target.name}.{os.getpid()}.part")
        try:
            with open(tmp, "wb") as out:
                for chunk in response.iter_content(1 << 20):
                    out.write(chunk)
            tmp.replace(target)
        finally:
            response.close()
            tmp.unlink(missing_ok=True)
        return target


def _body(response: requests.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text[:500]


def run_claimed(client: ServiceClient, base: str, work, failed) -> dict | str:
    """A piece of work the service hands out by claim (an export, a batch): POST `base`/claim, then
    `work(claim, token)` gives the outcome (`failed(exc)` the outcome of an exception), then POST `base`/finish with
    it, every call after the claim carrying the claim's token. Returns the outcome, or "skipped" (nothing to claim:
    settled already, or gone) or "fenced" (a later claim took it over)."""
    try:
        claim = client.call("POST", f"{base}/claim").json()
    except Refused as exc:
        log.info("%s not claimed: %s", base, exc)
        return "skipped"
    token = claim["token"]
    try:
        outcome = work(claim, token)
    except Fenced:
        return "fenced"
    except Exception as exc:  # noqa: BLE001 - a failure is the work's outcome, with its reason; the worker goes on
        log.exception("%s failed", base)
        outcome = failed(exc)
    try:
        client.call("POST", f"{base}/finish", json=outcome, attempt_token=token)
    except Fenced:
        return "fenced"
    return outcome


def _problem(exc: requests.RequestException, url: str) -> str:
    """A failed request's cause in a few words: urllib3's own message repeats the URL and nests three exceptions."""
    from urllib.parse import urlsplit

    where, text = urlsplit(url).netloc, str(exc)
    if isinstance(exc, requests.Timeout):
        return f"no answer from {where} in time ({type(exc).__name__})"
    if isinstance(exc, requests.ConnectionError):
        for marker, said in (("Connection refused", "connection refused"), ("Connection reset", "connection reset"),
                             ("Connection aborted", "connection closed"), ("Failed to resolve", "unknown host"),
                             ("Name or service not known", "unknown host")):
            if marker in text:
                return f"{said} by {where}" if said != "unknown host" else f"{said} {where}"
    return f"{type(exc).__name__}: {text}"
