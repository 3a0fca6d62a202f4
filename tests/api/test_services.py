"""Service functions on a session whose transaction is rolled back after each test.

These call the services directly (no HTTP), so they can run inside one outer transaction that
is never committed: the services' own flushes go to the database and vanish at the end.
"""

from __future__ import annotations

import pytest
from sqlalchemy.orm import Session

from allocator import AgentCertificateDocument, CertificateDocument, NodePlan
from api.errors import Conflict, NotFound, PreconditionFailed
from api.models import (
    AllocationRow,
    ArtifactRow,
    DeviceRow,
    ModelRow,
    NodePlanRow,
    NodeRow,
    ProfileRow,
    TenantRow,
)
from api.schemas import ModelCreate, TenantCreate, TenantUpdate
from api.services import models as model_service
from api.services import tenants as tenant_service
from api.services.allocations import own_certificate_row, plans_of_allocation, read_solve_input
from api.services.plans import ParsedPlans, empty_plan


def _node(session: Session, name: str, devices: list[tuple[str, int]]) -> NodeRow:
    node = NodeRow(
        name=name,
        token_hash=name * 4,
        devices=[
            DeviceRow(device=d, kind="gpu", memory_mb=8000, streams=s, seats=2) for d, s in devices
        ],
    )
    session.add(node)
    session.flush()
    return node


def test_get_or_raise_and_stale_revisions(session: Session) -> None:
    tenant = tenant_service.create_tenant(session=session, data=TenantCreate(name="ads"))
    with pytest.raises(Conflict):
        tenant_service.create_tenant(session=session, data=TenantCreate(name="ads"))
    with pytest.raises(NotFound):
        tenant_service.get_tenant_or_raise(session=session, tenant_id=tenant.id + 100)
    with pytest.raises(PreconditionFailed):
        tenant_service.update_tenant(
            session=session, tenant_id=tenant.id, data=TenantUpdate(weight=2), if_match='"r99"'
        )
    updated = tenant_service.update_tenant(
        session=session, tenant_id=tenant.id, data=TenantUpdate(weight=2), if_match='"r1"'
    )
    assert updated.revision == 2


def test_models_of_another_tenant_are_not_found(session: Session) -> None:
    a = tenant_service.create_tenant(session=session, data=TenantCreate(name="a"))
    b = tenant_service.create_tenant(session=session, data=TenantCreate(name="b"))
    data = ModelCreate(name="m", artifact="zoo:din", memory_mb=10, sla_p99_ms=5, demand_qps=1)
    model = model_service.create_model(session=session, tenant_id=a.id, data=data)
    with pytest.raises(NotFound):
        model_service.get_model_or_raise(session=session, tenant_id=b.id, model_id=model.id)
    assert model_service.list_models(session=session, tenant_id=b.id) == []


def test_snapshot_uses_profiles_estimates_and_skips_models_awaiting_upload(
    session: Session,
) -> None:
    ads = TenantRow(name="ads", weight=2.0, criterion="ef1")
    feed = TenantRow(name="feed", weight=1.0, criterion="prop_alpha")
    session.add_all([feed, ads])
    session.flush()
    ranker = ModelRow(
        tenant_id=ads.id,
        name="ranker",
        artifact="zoo:rmc1",
        memory_mb=100,
        replicas_wanted=2,
        sla_p99_ms=10,
        demand_qps=400,
    )
    waiting = ModelRow(
        tenant_id=feed.id,
        name="custom",
        artifact="api:0",
        memory_mb=100,
        replicas_wanted=1,
        sla_p99_ms=10,
        demand_qps=100,
    )
    session.add_all([ranker, waiting])
    session.flush()
    waiting.artifact = f"api:{waiting.id}"
    node_b = _node(session, "nb", [("cuda:1", 4), ("cuda:0", 4)])
    _node(session, "na", [("cuda:0", 6)])
    session.add(ProfileRow(model_id=ranker.id, device_id=node_b.devices[1].id, qps=[10.0, 15.0]))
    session.flush()

    solve_input = read_solve_input(session=session, objective="nash")
    snapshot = solve_input.snapshot
    assert [t.name for t in snapshot.tenants] == ["ads", "feed"]
    assert [g.gpu_id for g in snapshot.gpus] == ["na/cuda:0", "nb/cuda:0", "nb/cuda:1"]
    assert [m.model_id for m in snapshot.models] == [str(ranker.id)]  # the upload is missing
    model = snapshot.models[0]
    assert model.profiles["nb/cuda:0"].qps == (10.0, 15.0) and model.profiles["nb/cuda:0"].measured
    assert not model.estimate.measured and len(model.estimate.qps) == 6
    assert model.estimate.qps[0] == pytest.approx(200.0)  # demand / replicas with one stream
    assert snapshot.objective == "nash" and solve_input.version == 1 and solve_input.previous == {}

    session.add(ArtifactRow(model_id=waiting.id, data=b"PK\x03\x04", sha256="0" * 64, size_bytes=4))
    session.flush()
    assert len(read_solve_input(session=session, objective="nash").snapshot.models) == 2


def _row(value: float, envy: dict[str, float]) -> AgentCertificateDocument:
    return AgentCertificateDocument(
        alpha=0.5, criterion="ef1", weight=1.0, holds=True, slack=0.1, lam=0.0, factor=1.0,
        guaranteed=False,
        value=value, normalised_value=value / 6, total=6.0, envy=envy,
    )  # fmt: skip


def test_own_certificate_row_hides_other_tenants() -> None:
    certificate = CertificateDocument(
        fair=True, relaxed=False, violations=0, lambda_lower_bound=0.0, guarantee=None,
        agents={
            "ads": _row(3.0, {"feed": -1.0, "search": 0.5}),
            "feed": _row(2.0, {"ads": -2.0, "search": 0.0}),
            "search": _row(1.0, {"ads": 1.0, "feed": 0.0}),
        },
        objective="utilitarian", objective_value=6.0, unconstrained_value=6.0, ratio=1.0,
        lambda_ef=0.0, lambda_prop=0.0, solver="highs", status="optimal", gap=0.0, time_s=0.1,
        notes=[],
    )  # fmt: skip
    row = own_certificate_row(certificate, "feed")
    assert row.value == 2.0 and row.envy == {"other-1": -2.0, "other-2": 0.0}
    assert "ads" not in str(row.model_dump()) and "search" not in str(row.model_dump())


def _stored_allocation(session: Session, nodes: list[NodeRow], version: int) -> AllocationRow:
    allocation = AllocationRow(
        version=version, objective="welfare", solve_seconds=0.1, certificate={}, tenant_ids={}
    )
    session.add(allocation)
    session.flush()
    for node in nodes:
        plan = empty_plan(node=node.name, devices=node.devices)
        session.add(
            NodePlanRow(
                allocation_id=allocation.id,
                node_id=node.id,
                version=version,
                plan={**plan.to_dict(), "version": version, "allocation_id": allocation.id},
            )
        )
    session.flush()
    return allocation


def test_parsed_plans_parse_each_stored_plan_once_and_answer_only_for_rows_that_exist(
    session: Session,
) -> None:
    nodes = [_node(session, f"n{k}", [("cuda:0", 4), ("cuda:1", 8)]) for k in range(3)]
    first = _stored_allocation(session, nodes, version=1)
    second = _stored_allocation(session, nodes[:2], version=2)
    parsed = ParsedPlans(capacity=4)

    fresh = plans_of_allocation(session=session, allocation_id=first.id)
    kept = parsed.of_allocation(session=session, allocation_id=first.id)
    assert kept == fresh and set(kept) == {"n0", "n1", "n2"}
    assert all(isinstance(plan, NodePlan) and plan.version == 1 for plan in kept.values())
    # Read again: the very same parsed objects, not a new parse.
    again = parsed.of_allocation(session=session, allocation_id=first.id)
    assert all(again[name] is kept[name] for name in kept)
    # Another allocation's plans are its own, and over capacity the oldest parses go, not the
    # answers: each allocation still reads whole and right.
    newer = parsed.of_allocation(session=session, allocation_id=second.id)
    assert set(newer) == {"n0", "n1"} and {p.version for p in newer.values()} == {2}
    assert parsed.of_allocation(session=session, allocation_id=first.id) == fresh
    # A row that is gone is not answered from what was kept.
    session.delete(session.get(NodePlanRow, (first.id, nodes[2].id)))
    session.flush()
    assert set(parsed.of_allocation(session=session, allocation_id=first.id)) == {"n0", "n1"}
