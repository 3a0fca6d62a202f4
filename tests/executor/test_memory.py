"""Real memory: a replica's footprint is known before it loads and measured when it does, and a
plan whose replicas do not fit a device's memory is refused whole, with a message that says
which device lacks how much, while the plan before it serves on (docs/executor.md, "Memory").

The footprint tests and the refusal on the torch backend load real zoo models; the swap rules
run on the fake backend, whose replicas declare their footprint.
"""

from __future__ import annotations

import pytest

from allocator.cluster.plan import NodePlan
from executor.fake import FakeBackend
from executor.models import build_model, footprint_bytes, parse_zoo_artifact
from executor.runtime import device_memory, predict_footprint_bytes, save_torchscript
from executor.scheduling import NodeRuntime, PlanRefused, SchedulerConfig
from executor.scheduling.backend import RuntimeBackend
from tests.executor.scheduling_helpers import plan, queries, seat

MIB = 2**20


@pytest.mark.parametrize(
    "artifact",
    [
        "zoo:rmc1?scale=0.001&seed=1",
        "zoo:rmc2?scale=0.0013&seed=2&user_tables=28",
        "zoo:rmc3?scale=0.0007",
        "zoo:wnd?scale=0.002",
        "zoo:din?scale=0.0031",
    ],
)
def test_a_zoo_footprint_is_predicted_exactly_and_measured_on_load(artifact: str) -> None:
    predicted = footprint_bytes(parse_zoo_artifact(artifact))
    model = RuntimeBackend().load(artifact, "cpu")
    assert model.footprint_bytes == predicted > 0
    assert predict_footprint_bytes(artifact) == predicted


def test_a_torchscript_footprint_is_its_archives_tensor_records(tmp_path) -> None:
    artifact = "zoo:rmc1?scale=0.002&seed=3"
    zoo = build_model(parse_zoo_artifact(artifact))
    path = tmp_path / "ranker.pt"
    save_torchscript(zoo, zoo.schema, path)
    model = RuntimeBackend().load(f"file:{path}", "cpu")
    # Records are the tensors' storages: never fewer bytes than the weights they hold.
    assert predict_footprint_bytes(f"file:{path}") >= model.footprint_bytes > 0
    assert predict_footprint_bytes(f"file:{path}") < 1.1 * model.footprint_bytes


def test_the_host_reports_its_memory() -> None:
    memory = device_memory("cpu")
    assert 0 < memory.free_bytes <= memory.total_bytes


def test_a_plan_beyond_the_memory_limit_is_refused_before_anything_loads() -> None:
    big = "zoo:rmc2?scale=0.01&seed=0&user_tables=28"  # 78.6 MiB of weights
    runtime = NodeRuntime(RuntimeBackend(), SchedulerConfig(memory_limit_mb=50))
    with pytest.raises(PlanRefused) as refused:
        runtime.apply(plan([seat(0, "7", artifact=big), seat(1, "8", artifact="zoo:wnd")]))
    message = str(refused.value)
    big_mib, wnd_mib = (predict_footprint_bytes(a) / MIB for a in (big, "zoo:wnd"))
    assert message.startswith(
        f"plan version 1 refused: device cpu:0 (on cpu:0) needs {big_mib + wnd_mib:,.0f} MiB"
    )
    assert f"{big} {big_mib:,.0f} MiB, zoo:wnd {wnd_mib:,.0f} MiB" in message
    assert "room for 50 MiB" in message and "memory_limit_mb 50" in message
    assert runtime.deployment is None and runtime.refused is refused.value


def fake_plan(*artifacts: str, version: int, devices: int = 1) -> NodePlan:
    """One seat per artifact; with ``devices=2`` the seats alternate between cpu:0 and cpu:1."""
    plan_devices: list[dict[str, object]] = [
        {"device": f"cpu:{d}", "kind": "cpu", "streams": 0, "shared_pool_streams": 0, "seats": []}
        for d in range(devices)
    ]
    for k, artifact in enumerate(artifacts):
        device = plan_devices[k % devices]
        device["seats"].append(seat(k // devices, f"m{k}", artifact=artifact))  # type: ignore[attr-defined]
        device["streams"] += 1  # type: ignore[operator]
    return NodePlan.from_dict(
        {"format": 1, "node": "node-a", "version": version, "devices": plan_devices}
    )


@pytest.fixture
def fake_runtime():
    # The limit alone: the fake's devices never get memory back (FakeBackend.free_bytes).
    runtime = NodeRuntime(FakeBackend(row_s=0, batch_s=0), SchedulerConfig(memory_limit_mb=100))
    yield runtime
    runtime.close()


def test_a_refused_plan_leaves_the_old_one_serving(fake_runtime: NodeRuntime) -> None:
    fake_runtime.apply(fake_plan("fake:a?memory_mb=40", version=1))
    with pytest.raises(PlanRefused, match=r"needs 120 MiB .* room for 100 MiB"):
        fake_runtime.apply(fake_plan("fake:b?memory_mb=60", "fake:c?memory_mb=60", version=2))
    assert fake_runtime.plan_version == 1
    assert fake_runtime.refused is not None and fake_runtime.refused.version == 2
    query = queries(fake_runtime.group("m0").model.schema, [5], seed=1)[0]
    assert fake_runtime.submit("m0", query).future.result(timeout=5).shape == (5,)
    fake_runtime.apply(fake_plan("fake:a?memory_mb=40", version=3))  # reused: fits
    assert fake_runtime.refused is None and fake_runtime.plan_version == 3


def test_replicas_of_one_artifact_share_their_weights(fake_runtime: NodeRuntime) -> None:
    report = fake_runtime.apply(fake_plan(*["fake:a?memory_mb=90"] * 3, version=1))
    assert report is not None and report.loaded == 1
    assert fake_runtime.footprints() == {(f"m{k}", "cpu:0"): 90 * MIB for k in range(3)}


def test_plan_devices_placed_on_one_device_share_its_memory() -> None:
    runtime = NodeRuntime(
        FakeBackend(device_memory_mb=100), SchedulerConfig(), place=lambda device: "cpu:0"
    )
    two = fake_plan("fake:a?memory_mb=60", "fake:b?memory_mb=60", version=1, devices=2)
    with pytest.raises(PlanRefused, match=r"device cpu:0\+cpu:1 \(on cpu:0\) needs 120 MiB"):
        runtime.apply(two)


def test_a_plan_that_fits_only_without_the_old_weights_is_swapped_cold(
    fake_runtime: NodeRuntime,
) -> None:
    fake_runtime.apply(fake_plan("fake:a?memory_mb=60", version=1))
    report = fake_runtime.apply(fake_plan("fake:b?memory_mb=60", version=2))
    assert report is not None and report.cold and fake_runtime.plan_version == 2
    report = fake_runtime.apply(fake_plan("fake:b?memory_mb=60", "fake:c?memory_mb=30", version=3))
    assert report is not None and not report.cold  # b is reused, c fits beside it


def test_a_replica_that_measures_more_than_predicted_refuses_the_plan(
    fake_runtime: NodeRuntime,
) -> None:
    with pytest.raises(PlanRefused, match=r"measured 150 MiB"):
        fake_runtime.apply(fake_plan("fake:a?memory_mb=50&actual_mb=150", version=1))
    assert fake_runtime.deployment is None


@pytest.mark.gpu
def test_a_cuda_footprint_is_measured_by_the_allocator_and_the_device_reports_its_memory() -> None:
    artifact = "zoo:rmc2?scale=0.01&seed=0&user_tables=28"
    memory = device_memory("cuda:0")
    assert 0 < memory.free_bytes <= memory.total_bytes
    model = RuntimeBackend().load(artifact, "cuda:0")
    # The caching allocator's bytes: the weights, plus at most its rounding and what the probe
    # left cached (activations are freed), far below twice the weights.
    assert predict_footprint_bytes(artifact) <= model.footprint_bytes
    assert model.footprint_bytes < 1.5 * predict_footprint_bytes(artifact)
