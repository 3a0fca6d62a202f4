"""A tenant's models and their uploaded TorchScript artifacts.

Every function takes the calling tenant's id: a model of another tenant is "not found", never
"forbidden", so a tenant cannot even learn which model ids exist. An uploaded artifact is
checked to be a TorchScript archive (a zip file, as ``torch.jit.save`` writes) without loading
it: the control plane never runs tenant code, the node that serves the model does.
"""

from __future__ import annotations

import hashlib

from sqlalchemy import or_, select
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import flag_modified

from api.errors import Conflict, InvalidInput, NotFound
from api.models import ArtifactRow, ModelRow, utcnow
from api.schemas import UPLOAD_ARTIFACT, ModelCreate, ModelPublic, ModelUpdate
from api.services.revisions import check_if_match

ZIP_MAGIC = b"PK\x03\x04"


def upload_reference(model_id: int) -> str:
    """The artifact reference of an uploaded model, as plans carry it (allocator.cluster.plan)."""
    return f"api:{model_id}"


def _check_name_free(*, session: Session, tenant_id: int, name: str, model_id: int = 0) -> None:
    taken = session.scalar(
        select(ModelRow.id).where(
            ModelRow.tenant_id == tenant_id, ModelRow.name == name, ModelRow.id != model_id
        )
    )
    if taken is not None:
        raise Conflict(f"model {name!r} already exists", field="name")


def create_model(*, session: Session, tenant_id: int, data: ModelCreate) -> ModelRow:
    _check_name_free(session=session, tenant_id=tenant_id, name=data.name)
    model = ModelRow(tenant_id=tenant_id, **data.model_dump())
    session.add(model)
    session.flush()
    if data.artifact == UPLOAD_ARTIFACT:
        model.artifact = upload_reference(model.id)
        session.flush()
    return model


def list_models(
    *,
    session: Session,
    tenant_id: int,
    limit: int | None = None,
    after: int | None = None,
    name: str | None = None,
    ready: bool | None = None,
) -> list[ModelRow]:
    """The tenant's models by id: ``limit`` of them past id ``after``, of that name, ready
    (a zoo model, or an uploaded one whose file is in) or not."""
    query = (
        select(ModelRow).where(ModelRow.tenant_id == tenant_id).order_by(ModelRow.id).limit(limit)
    )
    if after is not None:
        query = query.where(ModelRow.id > after)
    if name is not None:
        query = query.where(ModelRow.name == name)
    if ready is not None:
        # An uploaded model's artifact is always ``api:<its id>`` (upload_reference).
        is_ready = or_(
            ~ModelRow.artifact.startswith("api:"),
            ModelRow.id.in_(select(ArtifactRow.model_id)),
        )
        query = query.where(is_ready if ready else ~is_ready)
    return list(session.scalars(query))


def get_model_or_raise(*, session: Session, tenant_id: int, model_id: int) -> ModelRow:
    model = session.get(ModelRow, model_id)
    if model is None or model.tenant_id != tenant_id:
        raise NotFound(f"model {model_id} not found")
    return model


def update_model(
    *, session: Session, tenant_id: int, model_id: int, data: ModelUpdate, if_match: str | None
) -> ModelRow:
    model = get_model_or_raise(session=session, tenant_id=tenant_id, model_id=model_id)
    check_if_match(if_match, model.revision)
    changes = {k: v for k, v in data.model_dump(exclude_unset=True).items() if v is not None}
    if "name" in changes:
        _check_name_free(
            session=session, tenant_id=tenant_id, name=changes["name"], model_id=model_id
        )
    if changes.get("artifact") == UPLOAD_ARTIFACT:
        changes["artifact"] = upload_reference(model.id)
    for key, value in changes.items():
        setattr(model, key, value)
    session.flush()
    return model


def delete_model(*, session: Session, tenant_id: int, model_id: int, if_match: str | None) -> None:
    model = get_model_or_raise(session=session, tenant_id=tenant_id, model_id=model_id)
    check_if_match(if_match, model.revision)
    session.delete(model)
    session.flush()


def uploaded_ids(*, session: Session, model_ids: list[int]) -> set[int]:
    if not model_ids:
        return set()
    return set(
        session.scalars(select(ArtifactRow.model_id).where(ArtifactRow.model_id.in_(model_ids)))
    )


def to_public(model: ModelRow, uploaded: set[int]) -> ModelPublic:
    """The model's public form; an ``api:`` model is ready once its artifact is uploaded."""
    ready = model.artifact != upload_reference(model.id) or model.id in uploaded
    return ModelPublic.model_validate({**_columns(model), "ready": ready})


def _columns(model: ModelRow) -> dict[str, object]:
    return {c.key: getattr(model, c.key) for c in ModelRow.__table__.columns}


def check_upload(
    *, session: Session, tenant_id: int, model_id: int, data: bytes, if_match: str | None
) -> None:
    """What an upload must pass before its archive is loaded (api.artifact_check): the model is
    the tenant's, ``If-Match`` (when sent) is current, and the body is a zip archive at all."""
    model = get_model_or_raise(session=session, tenant_id=tenant_id, model_id=model_id)
    check_if_match(if_match, model.revision, required=False)
    if not data.startswith(ZIP_MAGIC):
        raise InvalidInput(
            "the artifact is not a TorchScript archive (torch.jit.save writes a zip file)",
            field="body",
        )


def store_artifact(
    *, session: Session, tenant_id: int, model_id: int, data: bytes, if_match: str | None
) -> ArtifactRow:
    """Store an uploaded TorchScript file, which the sandbox loaded, and point the model at it
    (``api:<id>``); the checks of :func:`check_upload` are made again in this transaction."""
    check_upload(
        session=session, tenant_id=tenant_id, model_id=model_id, data=data, if_match=if_match
    )
    model = get_model_or_raise(session=session, tenant_id=tenant_id, model_id=model_id)
    row = session.get(ArtifactRow, model_id)
    if row is None:
        row = ArtifactRow(model_id=model_id)
        session.add(row)
    row.data = data
    row.sha256 = hashlib.sha256(data).hexdigest()
    row.size_bytes = len(data)
    row.uploaded_at = utcnow()
    model.artifact = upload_reference(model.id)
    # Bump the revision even when the reference is unchanged: new weights are a new model.
    flag_modified(model, "artifact")
    session.flush()
    return row


def load_artifact(*, session: Session, model_id: int) -> ArtifactRow:
    row = session.get(ArtifactRow, model_id)
    if row is None:
        raise NotFound(f"no artifact uploaded for model {model_id}")
    return row
