"""Export a registered model version on this worker: claim it, rebuild the run's model from its checkpoint, write
ONNX with the preprocessing inside, verify it against torch, upload the bundle and say ready (or failed, why).

Every call after the claim carries the claim's token: a second claim of the same version fences this one."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from trainq.settings import Settings
from trainq.workers.client import ServiceClient, run_claimed


def run_export(version_id: str, settings: Settings) -> str:
    """Export one version; return what happened (skipped, ready, failed, fenced)."""
    client = ServiceClient(settings.service_url, settings.worker_token)
    base = f"/api/v1/worker/exports/{version_id}"
    outcome = run_claimed(client, base, lambda claim, token: export(client, claim, base, token, settings),
                          lambda exc: {"state": "failed", "error": f"{type(exc).__name__}: {exc}"})
    return outcome if isinstance(outcome, str) else outcome["state"]


def upload(client: ServiceClient, claim: dict, base: str, token: str, name: str, blob: bytes) -> None:
    """One file of the bundle: straight into the object store when the claim carries a presigned URL for it (this
    claim's staging place, moved into the bundle at the finish), else through the service."""
    url = (claim.get("files") or {}).get(name)
    if url:
        client.call("PUT", url, data=blob)
    else:
        client.call("PUT", f"{base}/files/{name}", data=blob, attempt_token=token,
                    headers={"Content-Type": "application/octet-stream"})


def export(client: ServiceClient, claim: dict, base: str, token: str, settings: Settings) -> dict:
    from safetensors.torch import save as save_tensors

    from trainq.models.export import ExportError, export_onnx, signature, state_from_checkpoint
    from trainq.models.spec import JobSpec
    from trainq.workers.data import local_file, source, uploaded_of

    blob = client.download(claim["checkpoint_url"], token)
    arrays = uploaded = columns = names = None
    if claim.get("dataset"):
        d = claim["dataset"]
        uploaded = uploaded_of(d)
        spec = JobSpec.model_validate(claim["spec"])
        spec.dataset.resolve(uploaded)
        path = local_file(d, lambda target: client.download_to(d["url"], token, target), settings)
        arrays = source(spec.dataset, path, settings, placement=spec.training.data_placement)
        columns = d.get("columns")
        names = d.get("class_names") if d["kind"] == "arrays" else None  # a table's: by the spec's target
    state = state_from_checkpoint(blob, arrays, uploaded)
    with tempfile.TemporaryDirectory(prefix="trainq-export-") as folder:
        path = Path(folder) / "model.onnx"
        try:
            done = export_onnx(state, path, arrays, meta={"trainq_model_version": str(claim["version"])},
                               written=lambda: client.call("POST", f"{base}/verifying", attempt_token=token))
        except ExportError as exc:
            return {"state": "failed", "error": str(exc)}
        upload(client, claim, base, token, "model.onnx", path.read_bytes())
    weights = save_tensors({k: v.detach().contiguous().cpu() for k, v in state.model.state_dict().items()},
                           metadata={"trainq_spec": json.dumps(claim["spec"])})
    upload(client, claim, base, token, "weights.safetensors", weights)
    return {"state": "ready", "signature": signature(state, arrays, columns, names),
            "preprocessing": state.data.preprocessing.as_dict(),
            "checked": {str(size): worst for size, worst in done.checked.items()}}
