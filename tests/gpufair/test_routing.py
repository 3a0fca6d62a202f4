"""The routing rule shared by the gateway and the client (gpufair.routing), on tables made here."""

from __future__ import annotations

from executor.wire.routes import ModelRoutes, RouteReplica, RoutingTable
from gpufair.routing import Routes


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _table(urls: list[str]) -> RoutingTable:
    replicas = [RouteReplica(node=f"n{k}", url=u, device="cuda:0", seat=0, dedicated_streams=1,
                             pool_weight=0.5) for k, u in enumerate(urls)]  # fmt: skip
    return RoutingTable(version=1, models={"7": ModelRoutes(tenant="ads", replicas=replicas)})


def test_queries_go_to_the_replica_with_the_fewest_in_flight_and_spread_when_idle() -> None:
    routes = Routes()
    routes.update(_table(["http://a", "http://b", "http://c"]), '"r1"')
    first = routes.pick("7")
    assert first is not None
    held = [first]
    for _ in range(5):  # each pick holds its query: the next goes to the least loaded
        pick = routes.pick("7")
        assert pick is not None
        held.append(pick)
    counts = {u: sum(p.url == u for p in held) for u in ("http://a", "http://b", "http://c")}
    assert counts == {"http://a": 2, "http://b": 2, "http://c": 2}
    for pick in held:
        routes.done(pick)
    assert routes.in_flight() == 0
    idle = {routes.pick("7").url for _ in range(3)}  # type: ignore[union-attr]
    assert idle == {"http://a", "http://b", "http://c"}


def test_a_failed_daemon_gets_no_query_until_its_dead_time_passed() -> None:
    clock = Clock()
    routes = Routes(dead_s=1.0, clock=clock)
    routes.update(_table(["http://a", "http://b"]), None)
    routes.failed("http://a")
    assert routes.dead() == ["http://a"]
    for _ in range(4):
        pick = routes.pick("7")
        assert pick is not None and pick.url == "http://b"
        routes.done(pick)
    assert routes.pick("7", frozenset({"http://b"})) is None  # the retry has nowhere to go
    clock.now += 1.01
    assert routes.dead() == []
    assert {routes.pick("7", frozenset({"http://b"})).url} == {"http://a"}  # type: ignore[union-attr]


def test_an_unknown_model_has_no_replica() -> None:
    routes = Routes()
    assert not routes.received and routes.pick("7") is None
    routes.update(_table(["http://a"]), None)
    assert routes.received and routes.knows("7") and not routes.knows("8")
    assert routes.pick("8") is None
