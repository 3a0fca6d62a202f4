"""The routing table: which daemons serve each model, for the data plane's routers and clients.

The API serves it at ``GET /v1/routes`` (built by :mod:`api.services.dataplane` from the newest
allocation's plans and the URL each daemon advertises in its heartbeat), long-polled with an
ETag like a node's plan; ``gpufair gateway`` and :mod:`gpufair.client` parse it with
:class:`RoutingTable` and send each query to one of the model's replicas.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class RouteReplica(BaseModel):
    model_config = ConfigDict(frozen=True)

    node: str
    url: str = Field(description="the node's daemon, as it advertised itself")
    device: str
    seat: int
    dedicated_streams: int
    pool_weight: float


class ModelRoutes(BaseModel):
    model_config = ConfigDict(frozen=True)

    tenant: str
    replicas: list[RouteReplica]


class RoutingTable(BaseModel):
    """``GET /v1/routes``: every seated model's replicas."""

    model_config = ConfigDict(frozen=True)

    version: int = Field(description="the allocation version the replicas come from; 0: none")
    models: dict[str, ModelRoutes] = Field(description="model id -> its tenant and replicas")
