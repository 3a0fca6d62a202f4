"""``/v1/models``: a tenant's models, each a zoo architecture or an uploaded TorchScript file."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Query, Request, Response, status
from sqlalchemy.orm import Session

from api.deps import (
    CurrentTenant,
    IfMatch,
    OptionalIfMatch,
    SessionDep,
    StateDep,
    TenantOutsideTransaction,
    commit_errors,
    in_one_worker_call,
)
from api.idempotency import IdempotencyKey, fingerprint, remember, replay_if_known
from api.models import ModelRow
from api.openapi import errors
from api.pagination import NEXT_LINK, Page, next_page
from api.schemas import (
    NAME_PATTERN,
    ArtifactPublic,
    ModelCreate,
    ModelPublic,
    ModelUpdate,
    PathId,
)
from api.services import models as service
from api.services.revisions import revision_etag

router = APIRouter(prefix="/models", tags=["tenant"])


def _public(session: SessionDep, model: ModelRow, response: Response) -> ModelPublic:
    response.headers["ETag"] = revision_etag(model.revision)
    return service.to_public(model, service.uploaded_ids(session=session, model_ids=[model.id]))


@router.post(
    "", status_code=status.HTTP_201_CREATED,
    responses=errors(404, 409, s404="your tenant was deleted meanwhile",
                     s409="the name is taken"),
)  # fmt: skip
@in_one_worker_call
def create_model(
    request: Request,
    data: ModelCreate,
    tenant: CurrentTenant,
    session: SessionDep,
    state: StateDep,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> ModelPublic:
    """Register a model. ``artifact`` is a zoo reference, or ``api`` for a TorchScript file
    uploaded next with ``PUT /v1/models/{model}/artifact`` (the model waits for it). A retry
    with the same ``Idempotency-Key`` gets the first reply."""
    owner, print_, now = f"tenant:{tenant.id}", fingerprint(request, data), state.clock()
    replay_if_known(session=session, owner=owner, key=idempotency_key, print_=print_, now=now)
    public = _public(session, service.create_model(session=session, tenant_id=tenant.id,
                                                   data=data), response)
    remember(session=session, owner=owner, key=idempotency_key, print_=print_, status=201,
             body=public, now=now, etag=response.headers["ETag"])  # fmt: skip
    return public


@router.get("", responses=NEXT_LINK)
@in_one_worker_call
def list_models(
    request: Request,
    response: Response,
    tenant: CurrentTenant,
    session: SessionDep,
    page: Page,
    name: Annotated[str | None, Query(pattern=NAME_PATTERN, description="only this name")] = None,
    ready: Annotated[
        bool | None, Query(description="only models that can be seated (true), or the others")
    ] = None,
) -> list[ModelPublic]:
    """Your models, a page by id (``limit``, ``after``; ``Link`` to the next), optionally of
    one name, ready or not."""
    models = service.list_models(
        session=session,
        tenant_id=tenant.id,
        limit=page.limit + 1,
        after=page.after,
        name=name,
        ready=ready,
    )
    models = next_page(
        request, response, models, limit=page.limit, cursor="after", key=lambda r: r.id
    )
    uploaded = service.uploaded_ids(session=session, model_ids=[m.id for m in models])
    return [service.to_public(m, uploaded) for m in models]


@router.get("/{model}")
@in_one_worker_call
def read_model(
    model: PathId, tenant: CurrentTenant, session: SessionDep, response: Response
) -> ModelPublic:
    """One of your models; its revision is the ETag a PATCH or DELETE sends back."""
    row = service.get_model_or_raise(session=session, tenant_id=tenant.id, model_id=model)
    return _public(session, row, response)


@router.patch("/{model}", responses=errors(409, 412, 428, s409="the new name is taken"))
@in_one_worker_call
def update_model(
    model: PathId,
    data: ModelUpdate,
    tenant: CurrentTenant,
    session: SessionDep,
    response: Response,
    if_match: IfMatch = None,
) -> ModelPublic:
    """Change a model's SLA, demand, replicas, memory, weight or name; needs If-Match. The next
    solve uses the new figures."""
    row = service.update_model(
        session=session, tenant_id=tenant.id, model_id=model, data=data, if_match=if_match
    )
    return _public(session, row, response)


@router.delete(
    "/{model}", status_code=status.HTTP_204_NO_CONTENT, responses=errors(412, 428)
)
@in_one_worker_call
def delete_model(
    model: PathId, tenant: CurrentTenant, session: SessionDep, if_match: IfMatch = None
) -> Response:
    """Delete a model (and its artifact); the next solve leaves it out. Needs If-Match."""
    service.delete_model(session=session, tenant_id=tenant.id, model_id=model, if_match=if_match)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.put("/{model}/artifact", responses=errors(412))
async def upload_artifact(
    model: PathId,
    data: Annotated[bytes, Body(media_type="application/octet-stream")],
    tenant: TenantOutsideTransaction,
    state: StateDep,
    if_match: OptionalIfMatch = None,
) -> ArtifactPublic:
    """Upload the model's TorchScript file (``gpufair``'s ``save_torchscript``: the module with
    its schema inside). It is accepted only once it loaded and served a probe in a sandbox
    (api.artifact_check: 422 with the reason otherwise); then the model's artifact becomes
    ``api:<model>`` and nodes whose plan seats it download it from the API."""

    def check(session: Session) -> None:
        service.check_upload(
            session=session, tenant_id=tenant.id, model_id=model, data=data, if_match=if_match
        )

    def store(session: Session) -> ArtifactPublic:
        row = service.store_artifact(
            session=session, tenant_id=tenant.id, model_id=model, data=data, if_match=if_match
        )
        return ArtifactPublic.model_validate(row)

    # The cheap checks first, then the sandbox with no slot or transaction held, then the
    # store, which checks again: the model may have changed meanwhile.
    await state.db.run(check)
    await state.artifacts.check(data)
    with commit_errors():
        return await state.db.run(store, write=True)
