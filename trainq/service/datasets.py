"""Dataset versions as the rest of the service needs them: found by NAME (the latest) or NAME@VERSION for an owner,
and described to the spec (trainq.models.spec.Uploaded) so a job on one can be planned without reading its file."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from trainq.models.spec import Uploaded, split_ref
from trainq.service.tables import Dataset, Job, Model, ModelVersion


def version_of(session: Session, owner_id: str | None, ref: str) -> Dataset | None:
    """The owner's dataset version named by `ref`: NAME (the latest version) or NAME@VERSION."""
    name, version = split_ref(ref)
    query = select(Dataset).where(Dataset.owner_id == owner_id, Dataset.name == name)
    query = query.where(Dataset.version == version) if version else query.order_by(Dataset.version.desc())
    return session.scalars(query.limit(1)).first()


def uploaded(d: Dataset) -> Uploaded:
    """What a spec needs to know of a dataset version to be planned."""
    return Uploaded(d.name, d.version, d.kind, d.rows, d.classes, tuple(d.class_names) if d.class_names else None,
                    tuple(d.shape) if d.kind == "arrays" else None, d.profile, d.sha256, d.id)


def resolver(session: Session, owner_id: str | None):
    """A spec's `uploads` lookup for this owner."""
    def resolve(ref: str) -> Uploaded | None:
        d = version_of(session, owner_id, ref)
        return None if d is None else uploaded(d)
    return resolve


def claim_json(d: Dataset) -> dict:
    """A dataset version as a worker is told of it (trainq.models.spec.Uploaded's fields), without its file's URL."""
    return {"id": d.id, "name": d.name, "version": d.version, "kind": d.kind, "rows": d.rows, "classes": d.classes,
            "class_names": d.class_names, "shape": d.shape if d.kind == "arrays" else None, "profile": d.profile,
            "sha256": d.sha256, "source": d.source, "columns": d.columns}


def users_of(session: Session, d: Dataset) -> dict[str, list]:
    """The jobs and model versions trained on a dataset version (the latest 50 of each)."""
    jobs = session.execute(select(Job.id, Job.name, Job.status).where(Job.dataset_id == d.id)
                           .order_by(Job.created_at.desc()).limit(50)).all()
    versions = session.execute(select(Model.name, ModelVersion.version).join(Model, Model.id == ModelVersion.model_id)
                               .where(ModelVersion.dataset_id == d.id).limit(50)).all()
    return {"jobs": [{"id": j.id, "name": j.name, "status": j.status} for j in jobs],
            "models": [{"model": m.name, "version": m.version} for m in versions]}
