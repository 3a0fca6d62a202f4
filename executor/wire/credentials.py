"""The data plane's credential document: which keys may query the models of which tenant on a node.

A query for a model carries a key of the model's tenant (``Authorization: Bearer <key>``: the
tenant's API key, or an inference-only key it created); the daemon checks it locally, with no
call to the control plane per query. The API serves each node
``GET /v1/nodes/{node}/credentials`` with the same ETag long-poll as its plan: for every tenant
the node's plans seat, the *salted* hashes of the tenant's usable keys. The API stores only a
key's sha256 (:mod:`api.auth`), so the salted hash is an HMAC of that digest keyed by the
document's salt (one per node): the document never holds a key, nor the digests the API's
database holds, and a document taken from one node matches nothing on another.

The daemon computes the same function of the key a query presents (:func:`key_digest` in the
front, then :func:`salted`) and looks the result up among the model's tenant's entries.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from executor.wire.names import NAME_PATTERN

Hex = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
TenantName = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]

# A tenant holds a few keys; a node seats at most a few thousand tenants.
MAX_KEYS_PER_TENANT = 1024
MAX_TENANTS = 16384


def key_digest(key: str) -> str:
    """sha256 of a key, hex: what the API stores, and what a front sends its engine."""
    return hashlib.sha256(key.encode()).hexdigest()


def salted(salt: str, digest: str) -> str:
    """The document's entry for a key of sha256 ``digest``: HMAC-SHA256 keyed by the salt."""
    return hmac.new(bytes.fromhex(salt), digest.encode(), hashlib.sha256).hexdigest()


class CredentialDocument(BaseModel):
    """``GET /v1/nodes/{node}/credentials``: the salted key hashes by tenant name."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    node: str
    salt: Hex
    tenants: dict[TenantName, Annotated[list[Hex], Field(max_length=MAX_KEYS_PER_TENANT)]] = (
        Field(default_factory=dict, max_length=MAX_TENANTS)
    )
