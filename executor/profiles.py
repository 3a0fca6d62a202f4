"""The profile file: measured QPS-vs-streams curves, written by ``gpufair profile``, uploaded by
the daemon.

A profile file is a JSON object keyed by zoo architecture::

    {"rmc1": {"qps": [410.5, 790.2], "measured": true, "kind": "cpu",
              "device": "cpu (1 intra-op thread(s))", "sla_p99_ms": 25.0,
              "artifact": "zoo:rmc1?scale=0.01&seed=0&user_tables=7&candidate_dense=3"}}

``qps[s-1]`` is the latency-bounded throughput of one replica with ``s`` sessions (streams),
measured against ``sla_p99_ms`` on a device of ``kind`` (``gpu`` or ``cpu``, the words a node
plan uses). The daemon maps a curve onto every replica of its plan whose artifact is a zoo
model of that architecture, on every device of that kind, and uploads it as the model's
q_m(g, s) (docs/architecture.md §2) with ``PUT /v1/nodes/{node}/profiles``. The table scale and
seed of the artifact are not matched: the curve stands for the architecture on this node's hardware.

A curve measured against a looser SLA than a model's would overstate what the model can serve
within its own bound, so it is not uploaded for that model (logged); one measured against a
tighter SLA is a lower bound and is.

:func:`read_profiles` is the one reader; a bad file raises :class:`ProfileError` with a
one-line message naming the field, which the daemon turns into its start-up error.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard

from allocator.cluster.plan import NodePlan
from executor.models import ARCHITECTURES, ZooError, parse_zoo_artifact

log = logging.getLogger(__name__)

KINDS = ("gpu", "cpu")
MAX_POINTS = 1024  # the API refuses longer curves


class ProfileError(ValueError):
    """A profile file cannot be used; the message names the file and the field."""


@dataclass(frozen=True)
class ProfileCurve:
    """One architecture's latency-bounded throughput against sessions on one kind of device."""

    qps: tuple[float, ...]  # qps[s-1]: queries per second with s sessions, non-decreasing
    kind: str  # "gpu" or "cpu": the device kind of the plan the curve applies to
    sla_p99_ms: float  # the p99 bound the throughput was measured against
    measured: bool = True
    device: str = ""  # the device it was measured on, in words
    artifact: str = ""  # the exact replica that was profiled

    def to_dict(self) -> dict[str, Any]:
        return {
            "qps": list(self.qps),
            "measured": self.measured,
            "kind": self.kind,
            "device": self.device,
            "sla_p99_ms": self.sla_p99_ms,
            "artifact": self.artifact,
        }

    @classmethod
    def from_dict(cls, doc: Any, where: str) -> ProfileCurve:
        if not isinstance(doc, dict):
            raise ProfileError(f"{where}: expected an object with qps, kind and sla_p99_ms")
        if "qps" not in doc:
            raise ProfileError(
                f"{where}.qps: missing (is this `gpufair profile --compare-naive` output?)"
            )
        qps = doc["qps"]
        if not isinstance(qps, list) or not 1 <= len(qps) <= MAX_POINTS:
            raise ProfileError(f"{where}.qps: expected a list of 1 to {MAX_POINTS} numbers")
        for k, value in enumerate(qps):
            if not _number(value) or value < 0 or not math.isfinite(value):
                raise ProfileError(f"{where}.qps[{k}]: expected a finite number >= 0")
        if any(b < a for a, b in zip(qps, qps[1:], strict=False)):
            raise ProfileError(f"{where}.qps: must not decrease as sessions are added")
        kind = doc.get("kind")
        if kind not in KINDS:
            raise ProfileError(
                f"{where}.kind: expected 'gpu' or 'cpu', got {kind!r} "
                "(profiles written before the field existed: run `gpufair profile` again)"
            )
        sla = doc.get("sla_p99_ms")
        if not _number(sla) or not 0 < sla < math.inf:
            raise ProfileError(f"{where}.sla_p99_ms: expected a positive number, got {sla!r}")
        measured = doc.get("measured", True)
        if not isinstance(measured, bool):
            raise ProfileError(f"{where}.measured: expected true or false")
        return cls(
            qps=tuple(float(q) for q in qps),
            kind=kind,
            sla_p99_ms=float(sla),
            measured=measured,
            device=str(doc.get("device", "")),
            artifact=str(doc.get("artifact", "")),
        )


def _number(value: Any) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def read_profiles(path: Path) -> dict[str, ProfileCurve]:
    """The curves of a profile file by architecture; raise ProfileError for a bad file."""
    try:
        doc = json.loads(path.read_text())
    except OSError as exc:
        raise ProfileError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ProfileError(f"{path}: invalid JSON: {exc}") from exc
    if not isinstance(doc, dict) or not doc:
        raise ProfileError(f"{path}: expected an object of architecture -> curve")
    curves: dict[str, ProfileCurve] = {}
    for arch, curve in doc.items():
        if arch not in ARCHITECTURES:
            raise ProfileError(
                f"{path}: {arch!r} is not a zoo architecture; known: {', '.join(ARCHITECTURES)}"
            )
        curves[arch] = ProfileCurve.from_dict(curve, f"{path}: {arch}")
    return curves


def plan_profiles(curves: dict[str, ProfileCurve], plan: NodePlan) -> list[dict[str, Any]]:
    """The ``PUT /v1/nodes/{node}/profiles`` entries for a plan's replicas that a curve covers.

    One entry per (model id, device): a zoo replica's architecture picks the curve, the
    device's kind must be the curve's, and the model's SLA must not be tighter than the one the
    curve was measured against. Curves marked unmeasured and model ids that are not the API's
    integers (a hand-written plan) are skipped.
    """
    entries: dict[tuple[int, str], dict[str, Any]] = {}
    for device, seat in plan.replicas():
        replica = seat.replica
        assert replica is not None
        try:
            arch = parse_zoo_artifact(replica.artifact).arch
        except ZooError:
            continue  # a tenant's TorchScript file or a fake: no architecture to look up
        curve = curves.get(arch)
        model_id = replica.model_id
        if curve is None or not curve.measured or curve.kind != device.kind:
            continue
        if not (model_id.isascii() and model_id.isdigit() and int(model_id) >= 1):
            continue
        if curve.sla_p99_ms > replica.sla_p99_ms:
            log.warning(
                "profile of %s not uploaded for model %s: measured within %g ms, its SLA is %g ms",
                arch, model_id, curve.sla_p99_ms, replica.sla_p99_ms,
            )  # fmt: skip
            continue
        key = (int(model_id), device.device)
        entries[key] = {"model_id": key[0], "device": key[1], "qps": list(curve.qps)}
    return [entries[key] for key in sorted(entries)]
