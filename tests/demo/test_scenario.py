"""The demo's scenario file and the equal split it is compared with."""

from __future__ import annotations

from pathlib import Path

import pytest

from allocator.certificate import certify
from allocator.cluster.instance import pool_name
from gpufair.demo.naive import cluster_instance, equal_split, naive_rows
from gpufair.demo.scenario import MEAN_CANDIDATES, UTILISATION, ScenarioError, load_scenario

ROOT = Path(__file__).resolve().parents[2]
SCENARIO = ROOT / "examples" / "demo.toml"


def test_the_shipped_scenario_has_several_devices_pools_and_distinct_tenants() -> None:
    scenario = load_scenario(SCENARIO)
    devices = [(n.backend, d) for n in scenario.nodes for d in n.devices]
    assert {backend for backend, _ in devices} == {"fake", "torch"}
    assert all(d.streams > d.seats for _, d in devices)  # a shared pool on every device
    assert len({t.criterion for t in scenario.tenants}) == len(scenario.tenants)
    assert len({t.weight for t in scenario.tenants}) > 1


def test_a_simulated_stream_serves_what_the_fake_backend_s_service_time_allows() -> None:
    scenario = load_scenario(SCENARIO)
    sim = next(n for n in scenario.nodes if n.backend == "fake")
    device = sim.devices[0].device
    seconds = (sim.batch_us + sim.row_us * MEAN_CANDIDATES) / 1e6
    assert scenario.stream_qps(sim.name, device) == pytest.approx(1 / seconds)
    curve = scenario.curve(sim.name, device)
    assert len(curve) == sim.devices[0].streams
    assert curve[1] == pytest.approx(2 * UTILISATION / seconds, rel=1e-3)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (('flood_tenant = "search"', 'flood_tenant = "nobody"'), "flood_tenant 'nobody'"),
        (("stream_qps = 200", ""), "stream_qps is required"),
        (('criterion = "efm"', 'criterion = "fairest"'), "unknown criterion 'fairest'"),
        (("seats = 3", "seats = 7"), "streams (6) below seats (7)"),
        (("rate_qps = 12", "rate_qps = -1"), "tenants.0.model.rate_qps"),
        (('objective = "nash"', 'objective = "kindest"'), "objective 'kindest' is not one of"),
        # A simulated query that takes no time has no capacity to plan with.
        (("row_us = 300\nbatch_us = 3000", "row_us = 0\nbatch_us = 0"),
         "nodes.0: Value error, node sim: row_us and batch_us are both 0"),
        # TOML spells inf: an infinite flood or tolerance would make a claim hold vacuously.
        (("flood_factor = 10.0", "flood_factor = inf"), "flood_factor"),
        (("throttle_tolerance = 0.10", "throttle_tolerance = inf"), "claims.throttle_tolerance"),
        (("row_us = 300", "row_us = inf"), "nodes.0.row_us"),
    ],
)
def test_a_bad_scenario_is_one_line_naming_the_field(
    tmp_path: Path, edit: tuple[str, str], message: str
) -> None:
    text = SCENARIO.read_text()
    assert edit[0] in text
    path = tmp_path / "bad.toml"
    path.write_text(text.replace(edit[0], edit[1], 1))
    with pytest.raises(ScenarioError) as caught:
        load_scenario(path)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_the_equal_split_deals_every_fitting_seat_and_splits_each_pool_equally() -> None:
    scenario = load_scenario(SCENARIO)
    cluster = cluster_instance(scenario)
    allocation = equal_split(cluster, scenario)
    certify(cluster.instance, allocation)  # a valid allocation of the allocator's instance
    for seat, holder in allocation.indivisible.items():
        allowed = [a.name for a in cluster.instance.agents
                   if (a.name, seat) not in cluster.instance.forbidden]
        assert (holder is None) == (not allowed), seat
    for node in scenario.nodes:
        for device in node.devices:
            shares = allocation.divisible[pool_name(f"{node.name}/{device.device}")]
            assert len(set(shares.values())) <= 1  # equal
    rows = naive_rows(scenario)
    assert sum(r.share for r in rows.values()) == pytest.approx(1.0)
    # The point of the comparison: the equal split breaks some tenant's own criterion here.
    assert not all(r.holds for r in rows.values())
