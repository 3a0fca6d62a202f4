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

Every curve is uploaded with the SLA it was measured against: the allocator values a model at
the curve translated to the model's own SLA (``allocator.cluster.snapshot.within_sla``: lower
within a tighter bound; a curve measured within a tighter bound than the model's is a lower bound
and is kept as it is).

A :class:`ProfileCurve` is the allocator's :class:`~allocator.ThroughputCurve` (the one
definition of a curve: finite, non-negative, non-decreasing, at most 1024 points) plus where it
was measured, so a file the daemon reads holds exactly the curves the API accepts and the
allocator solves on; what it uploads is :mod:`executor.wire.profiles`'s entries.

:func:`read_profiles` is the one reader; a bad file raises :class:`ProfileError` with a
one-line message naming the field, which the daemon turns into its start-up error.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, TypeAdapter, ValidationError
from pydantic.dataclasses import dataclass

from allocator import NodePlan, ThroughputCurve
from allocator.errors import first_error
from executor.models import ARCHITECTURES, ZooError, parse_zoo_artifact
from executor.wire.profiles import FootprintEntry, ProfileEntry

log = logging.getLogger(__name__)

# What a missing field most likely means.
_MISSING_HINTS = {
    "qps": "is this `gpufair profile --compare-naive` output?",
    "kind": "profiles written before the field existed: run `gpufair profile` again",
}


class ProfileError(ValueError):
    """A profile file cannot be used; the message names the file and the field."""


@dataclass(frozen=True, kw_only=True, config=ConfigDict(extra="ignore"))
class ProfileCurve(ThroughputCurve):
    """One architecture's latency-bounded throughput against sessions on one kind of device:
    a throughput curve (``qps[s-1]`` with ``s`` sessions), measured unless marked otherwise.

    Keys of the file beyond these are ignored, so a newer ``gpufair profile`` may record more.
    """

    measured: Annotated[bool, Field(strict=True)] = True
    kind: Literal["gpu", "cpu"]  # the device kind of the plans the curve applies to
    # The p99 bound the throughput was measured against.
    sla_p99_ms: Annotated[float, Field(gt=0, allow_inf_nan=False, strict=True)]
    device: str = ""  # the device it was measured on, in words
    artifact: str = ""  # the exact replica that was profiled

    def to_dict(self) -> dict[str, Any]:
        """The curve as an entry of a profile file."""
        return _PROFILE_CURVE.dump_python(self, mode="json")


_PROFILE_CURVE: TypeAdapter[ProfileCurve] = TypeAdapter(ProfileCurve)


def parse_profile_curve(document: Any, where: str) -> ProfileCurve:
    """One entry of a profile file; raise ProfileError naming ``where`` and the bad field."""
    try:
        return _PROFILE_CURVE.validate_python(document)
    except ValidationError as exc:
        message = first_error(exc, where)
        first = exc.errors()[0]
        hint = _MISSING_HINTS.get(str(first["loc"][-1])) if first["type"] == "missing" else None
        raise ProfileError(f"{message} ({hint})" if hint else message) from None


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
        curves[arch] = parse_profile_curve(curve, f"{path}: {arch}")
    return curves


def _api_model_id(model_id: str) -> int | None:
    """The API's integer id of a plan's model, or None (a hand-written plan's name)."""
    if model_id.isascii() and model_id.isdigit() and int(model_id) >= 1:
        return int(model_id)
    return None


def plan_footprints(footprints: dict[tuple[str, str], int]) -> list[FootprintEntry]:
    """The ``PUT /v1/nodes/{node}/profiles`` footprint entries: one per (model id, plan
    device) of ``footprints`` (bytes), in MiB rounded up; model ids that are not the API's
    integers and empty footprints are skipped, as are entries the contract refuses (logged)."""
    entries: dict[tuple[int, str], FootprintEntry] = {}
    for (model_id, device), size in footprints.items():
        api_id = _api_model_id(model_id)
        if api_id is None or size <= 0:
            continue
        try:
            entries[(api_id, device)] = FootprintEntry(
                model_id=api_id, device=device, memory_mb=-(-size // 2**20)
            )
        except ValidationError as exc:
            log.warning("footprint of model %s on %s not uploaded: %s", model_id, device,
                        first_error(exc, "entry"))  # fmt: skip
    return [entries[key] for key in sorted(entries)]


def plan_profiles(curves: dict[str, ProfileCurve], plan: NodePlan) -> list[ProfileEntry]:
    """The ``PUT /v1/nodes/{node}/profiles`` entries for a plan's replicas that a curve covers.

    One entry per (model id, device), with the SLA the curve was measured against: a zoo
    replica's architecture picks the curve and the device's kind must be the curve's. Curves
    marked unmeasured and model ids that are not the API's integers (a hand-written plan) are
    skipped, as are entries the upload's contract (:class:`~executor.wire.profiles.ProfileEntry`)
    refuses, which are logged.
    """
    entries: dict[tuple[int, str], ProfileEntry] = {}
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
        if _api_model_id(model_id) is None:
            continue
        key = (int(model_id), device.device)
        try:
            entries[key] = ProfileEntry(
                model_id=key[0], device=key[1], qps=curve.qps, sla_p99_ms=curve.sla_p99_ms
            )
        except ValidationError as exc:  # an id or device name the API cannot have
            log.warning(
                "profile of %s not uploaded for model %s on %s: %s",
                arch,
                model_id,
                device.device,
                first_error(exc, "entry"),
            )
    return [entries[key] for key in sorted(entries)]
