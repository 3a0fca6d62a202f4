"""A route that takes a session runs, validates its reply and commits in one worker-thread call
(``api.deps.in_one_worker_call``), and still rolls back everything when it fails."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from sqlalchemy.orm import Session

from api import deps
from api.routes import tenants as tenant_routes
from tests.api.conftest import Api


def test_a_route_and_its_commit_share_one_worker_call_and_the_dependency_adds_no_hop(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, key = api.tenant("ads", criterion="ef1")
    me = api.client.get("/v1/tenants/me", headers=api.bearer(key))
    threads: dict[str, list[int]] = {"route": [], "commit": []}
    ends: list[bool] = []
    update = tenant_routes.service.update_tenant
    commit = Session.commit
    end = deps._end

    def update_in(**kwargs: Any) -> Any:
        threads["route"].append(threading.get_ident())
        return update(**kwargs)

    def commit_in(self: Session) -> None:
        if threads["route"]:
            threads["commit"].append(threading.get_ident())
        commit(self)

    def end_hop(session: Session, *, commit: bool) -> None:
        ends.append(commit)
        end(session, commit=commit)

    monkeypatch.setattr(tenant_routes.service, "update_tenant", update_in)
    monkeypatch.setattr(Session, "commit", commit_in)
    monkeypatch.setattr(deps, "_end", end_hop)
    changed = api.client.patch(
        "/v1/tenants/me",
        json={"criterion": "prop1"},
        headers={**api.bearer(key), "If-Match": me.headers["ETag"]},
    )
    assert changed.status_code == 200 and changed.json()["criterion"] == "prop1", changed.text
    # The commit ran in the route's own thread, and the dependency made no call of its own.
    assert threads["commit"] == threads["route"] and len(threads["route"]) == 1
    assert ends == []
    # The change is stored: a fresh read sees it, with the ETag the PATCH answered.
    again = api.client.get("/v1/tenants/me", headers=api.bearer(key))
    assert again.json()["criterion"] == "prop1" and again.headers["ETag"] == changed.headers["ETag"]
    # A route that fails commits nothing: the dependency rolls back (its one hop).
    stale = api.client.patch(
        "/v1/tenants/me",
        json={"criterion": "efm"},
        headers={**api.bearer(key), "If-Match": me.headers["ETag"]},
    )
    assert stale.status_code == 412 and ends == [False]
    after = api.client.get("/v1/tenants/me", headers=api.bearer(key))
    assert after.json()["criterion"] == "prop1"
