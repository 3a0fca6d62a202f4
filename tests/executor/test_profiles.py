"""Profile files: the one reader refuses a bad file in one line, and a plan's replicas get the
curves of their architecture on devices of the curve's kind, within their SLA."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from allocator.cluster.plan import NodePlan
from executor.profiles import (
    ProfileCurve,
    ProfileError,
    parse_profile_curve,
    plan_profiles,
    read_profiles,
)
from executor.wire.profiles import ProfileEntry

GOOD = {"qps": [100.0, 180.0], "measured": True, "kind": "cpu", "sla_p99_ms": 25.0,
        "device": "cpu (1 intra-op thread(s))", "artifact": "zoo:rmc1?scale=0.002"}  # fmt: skip


def _write(tmp_path: Path, doc: Any) -> Path:
    path = tmp_path / "profiles.json"
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return path


def test_a_profile_file_reads_back_as_it_was_written(tmp_path: Path) -> None:
    curve = parse_profile_curve(GOOD, "x")
    assert read_profiles(_write(tmp_path, {"rmc1": curve.to_dict()})) == {"rmc1": curve}
    assert curve.qps == (100.0, 180.0) and curve.kind == "cpu" and curve.sla_p99_ms == 25.0


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ("{", "invalid JSON"),
        ([], "expected an object of architecture -> curve"),
        ({}, "expected an object of architecture -> curve"),
        ({"rmc9": GOOD}, "'rmc9' is not a zoo architecture"),
        ({"rmc1": [1, 2]}, "rmc1: Input should be a dictionary"),
        (
            {"rmc1": {"artifact": "zoo:rmc1", "structured_ms": 1.0}},
            "rmc1.qps: Field required (is this `gpufair profile --compare-naive` output?)",
        ),
        ({"rmc1": GOOD | {"qps": []}}, "rmc1.qps: Tuple should have at least 1 item"),
        ({"rmc1": GOOD | {"qps": [0.0] * 1025}}, "rmc1.qps: Tuple should have at most 1024"),
        ({"rmc1": GOOD | {"qps": [1, "2"]}}, "rmc1.qps[1]: Input should be a valid number"),
        ({"rmc1": GOOD | {"qps": [1, -2]}}, "rmc1.qps[1]: Input should be greater than or equal"),
        ({"rmc1": GOOD | {"qps": [1, float("inf")]}}, "rmc1.qps[1]: Input should be a finite"),
        ({"rmc1": GOOD | {"qps": [True]}}, "rmc1.qps[0]: Input should be a valid number"),
        ({"rmc1": GOOD | {"qps": [5, 4]}}, "rmc1.qps: must not decrease"),
        (
            {"rmc1": {k: v for k, v in GOOD.items() if k != "kind"}},
            "rmc1.kind: Field required (profiles written before the field existed",
        ),
        ({"rmc1": GOOD | {"kind": "tpu"}}, "rmc1.kind: Input should be 'gpu' or 'cpu'"),
        ({"rmc1": GOOD | {"sla_p99_ms": 0}}, "rmc1.sla_p99_ms: Input should be greater than 0"),
        ({"rmc1": GOOD | {"measured": "yes"}}, "rmc1.measured: Input should be a valid boolean"),
    ],
)
def test_a_bad_profile_file_is_refused_in_one_line_naming_the_field(
    tmp_path: Path, doc: Any, message: str
) -> None:
    path = _write(tmp_path, doc)
    with pytest.raises(ProfileError) as refused:
        read_profiles(path)
    text = str(refused.value)
    assert text.startswith(str(path)) and message in text and "\n" not in text


def test_an_unreadable_profile_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="cannot read"):
        read_profiles(tmp_path / "absent.json")
    with pytest.raises(ProfileError, match="cannot read"):
        read_profiles(tmp_path)


def _replica(model_id: str, artifact: str, sla_ms: float = 50.0) -> dict[str, Any]:
    return {"model_id": model_id, "tenant": "t", "artifact": artifact, "sla_p99_ms": sla_ms}


def _node(*devices: tuple[str, str, list[dict[str, Any] | None]]) -> NodePlan:
    return NodePlan.from_dict({
        "node": "n", "version": 1,
        "devices": [
            {"device": name, "kind": kind, "streams": len(seats), "shared_pool_streams": 0,
             "seats": [{"seat": k, "replica": r, "dedicated_streams": 0, "pool_weight": 1.0}
                       for k, r in enumerate(seats)]}
            for name, kind, seats in devices
        ],
    })  # fmt: skip


def test_each_zoo_replica_gets_its_architectures_curve_on_devices_of_the_curves_kind() -> None:
    curves = {
        "rmc1": ProfileCurve(qps=(100.0, 150.0), kind="gpu", sla_p99_ms=20.0),
        "wnd": ProfileCurve(qps=(70.0,), kind="cpu", sla_p99_ms=20.0),
        "din": ProfileCurve(qps=(30.0,), kind="gpu", sla_p99_ms=20.0, measured=False),
    }
    plan = _node(
        ("cuda:1", "gpu", [
            _replica("4", "zoo:rmc1?scale=0.01&seed=3"),  # any scale and seed: the arch counts
            _replica("4", "zoo:rmc1?scale=0.01&seed=3"),  # a second replica: one entry
            _replica("5", "zoo:rmc1?scale=0.5", sla_ms=20.0),  # the curve's own bound: kept
            _replica("6", "zoo:rmc1", sla_ms=10.0),  # tighter than measured: the API translates
            _replica("7", "zoo:wnd"),  # a CPU curve on a GPU: skipped
            _replica("8", "zoo:din"),  # not measured: skipped
            _replica("9", "file:/models/9.pt"),  # no architecture: skipped
            _replica("manual", "zoo:rmc1"),  # not an API model id: skipped
            None,
        ]),
        ("cuda:0", "gpu", [_replica("4", "zoo:rmc1?scale=0.01&seed=3")]),
        ("cpu:0", "cpu", [_replica("7", "zoo:wnd"), _replica("4", "zoo:rmc1")]),
    )  # fmt: skip
    # Every entry carries the bound its curve was measured against.
    assert plan_profiles(curves, plan) == [
        ProfileEntry(model_id=4, device="cuda:0", qps=(100.0, 150.0), sla_p99_ms=20.0),
        ProfileEntry(model_id=4, device="cuda:1", qps=(100.0, 150.0), sla_p99_ms=20.0),
        ProfileEntry(model_id=5, device="cuda:1", qps=(100.0, 150.0), sla_p99_ms=20.0),
        ProfileEntry(model_id=6, device="cuda:1", qps=(100.0, 150.0), sla_p99_ms=20.0),
        ProfileEntry(model_id=7, device="cpu:0", qps=(70.0,), sla_p99_ms=20.0),
    ]
    assert plan_profiles({}, plan) == []
