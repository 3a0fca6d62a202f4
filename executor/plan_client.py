"""API mode of the daemon: pull this node's plan from the control plane, report heartbeats.

The daemon long-polls ``GET {api}/v1/nodes/{node}/plan?wait=S`` with ``If-None-Match`` set to
the ETag of the plan it serves: the API answers 304 when nothing changed within ``S`` seconds
and 200 with the new plan document as soon as one is stored. A new plan is parsed by
:meth:`NodePlan.from_dict` (the one parser) and applied by the runtime, which drains the old
version first. Every ``heartbeat_s`` it posts ``POST {api}/v1/nodes/{node}/heartbeat`` with
the plan version it serves and each replica's counters.

Replicas whose artifact is ``api:<model_id>`` (a tenant's uploaded TorchScript file) are
fetched from ``GET {api}/v1/nodes/{node}/artifacts/{model_id}`` into ``artifact_dir`` (named by
their SHA-256, so an unchanged file is downloaded once) and served as ``file:<path>``.

The API being down never stops serving: failures are logged, retried with exponential backoff
(capped), and the last plan keeps running. A plan the API serves that does not parse is logged
and skipped (its ETag is remembered, so it is not fetched again until it changes).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import tempfile
import threading
from pathlib import Path
from typing import Any

import httpx

from allocator.plan import NodePlan, PlanError
from executor.scheduling import NodeRuntime

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 30.0


class PlanClient:
    """Two background threads: the plan long-poll and the heartbeat."""

    def __init__(
        self,
        runtime: NodeRuntime,
        *,
        api_url: str,
        node: str,
        token: str,
        heartbeat_s: float = 5.0,
        long_poll_s: float = 30.0,
        artifact_dir: Path | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._runtime = runtime
        self._artifact_dir = artifact_dir or Path(tempfile.gettempdir()) / "gpufair-artifacts"
        self._node = node
        self._long_poll_s = long_poll_s
        self._heartbeat_s = heartbeat_s
        self._client = httpx.Client(
            base_url=api_url.rstrip("/"),
            headers={"Authorization": f"Bearer {token}"},
            timeout=httpx.Timeout(10.0, read=long_poll_s + 10.0),
            transport=transport,
        )
        self.etag: str | None = None  # of the last plan document received (applied or not)
        self.heartbeats_sent = 0
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._plan_loop, name="plan-poll", daemon=True),
            threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True),
        ]

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            if t.is_alive():
                t.join(timeout=2.0)  # daemon threads: a long-poll in flight dies with us
        self._client.close()

    def poll_once(self, wait_s: float = 0.0) -> bool:
        """One plan request; True when a new plan was applied. Raises httpx errors."""
        headers = {"If-None-Match": self.etag} if self.etag else {}
        params = {"wait": f"{wait_s:g}"} if wait_s > 0 else {}
        response = self._client.get(f"/v1/nodes/{self._node}/plan", headers=headers, params=params)
        if response.status_code == 304:
            return False
        response.raise_for_status()
        etag = response.headers.get("ETag")
        try:
            plan = NodePlan.from_dict(response.json())
        except (PlanError, ValueError) as exc:
            log.error("plan from %s refused, keeping the current one: %s", response.url, exc)
            self.etag = etag
            return False
        if plan.node != self._node:
            log.error("plan for node %r refused: this is node %r", plan.node, self._node)
            self.etag = etag
            return False
        current = self._runtime.plan_version
        if current is not None and plan.version <= current:
            self.etag = etag
            return False
        resolved = self._fetch_artifacts(plan)  # a failed download leaves the ETag: retried
        self.etag = etag
        return self._runtime.apply(resolved) is not None

    def _fetch_artifacts(self, plan: NodePlan) -> NodePlan:
        """The plan with every ``api:`` artifact downloaded and replaced by ``file:<path>``."""
        devices = []
        for device in plan.devices:
            seats = []
            for seat in device.seats:
                replica = seat.replica
                if replica is not None and replica.artifact.startswith("api:"):
                    path = self._download(replica.artifact.removeprefix("api:"))
                    replica = dataclasses.replace(replica, artifact=f"file:{path}")
                    seat = dataclasses.replace(seat, replica=replica)
                seats.append(seat)
            devices.append(dataclasses.replace(device, seats=tuple(seats)))
        return dataclasses.replace(plan, devices=tuple(devices))

    def _download(self, model_id: str) -> Path:
        response = self._client.get(f"/v1/nodes/{self._node}/artifacts/{model_id}")
        response.raise_for_status()
        digest = hashlib.sha256(response.content).hexdigest()
        path = self._artifact_dir / f"{model_id}-{digest[:16]}.pt"
        if not path.exists():
            self._artifact_dir.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(".part")
            partial.write_bytes(response.content)
            partial.replace(path)  # never a half-written file under the final name
        return path

    def heartbeat(self) -> None:
        """Post one heartbeat. Raises httpx errors."""
        response = self._client.post(f"/v1/nodes/{self._node}/heartbeat", json=self._report())
        response.raise_for_status()
        self.heartbeats_sent += 1

    def _report(self) -> dict[str, Any]:
        deployment = self._runtime.deployment
        replicas = []
        if deployment is not None:
            for device in deployment.devices:
                for g in device.groups:
                    replicas.append(
                        {
                            "device": device.plan.device,
                            "seat": g.seat.seat,
                            "model_id": g.model_id,
                            "tenant": g.tenant,
                            "in_flight": g.in_flight,
                            "completed": g.stats.completed,
                            "rejected": g.stats.rejected,
                            "expired": g.stats.expired,
                            "busy_s": g.stats.busy_own_s + g.stats.busy_pool_s,
                        }
                    )
        return {
            "plan_version": self._runtime.plan_version,
            "replicas": replicas,
            "broken": deployment.broken if deployment else {},
        }

    def _plan_loop(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                self.poll_once(self._long_poll_s)
                failures = 0
            except httpx.HTTPError as exc:
                failures += 1
                backoff = min(MAX_BACKOFF_S, 0.5 * 2 ** min(failures, 6))
                log.warning("plan pull failed (%s); serving the last plan, retry in %.1fs", exc,
                            backoff)
                self._stop.wait(backoff)

    def _heartbeat_loop(self) -> None:
        while not self._stop.wait(self._heartbeat_s):
            try:
                self.heartbeat()
            except httpx.HTTPError as exc:
                log.warning("heartbeat failed: %s", exc)
