"""Who may query a model on this node: the check of a query's credential, before its body is read.

A query for model m must present a key of m's tenant (``Authorization: Bearer <key>``). The
front hashes what it presents (:func:`presented_digest`, sha256: the front's CPU, not the
engine's) and sends the digest with its admission call; the engine checks it here against the
node's :class:`~executor.wire.credentials.CredentialDocument` (the salted hashes of the keys of
the tenants seated on the node, long-polled from the API by :mod:`executor.plan_client`), with
no call to the API per query. The check runs in :meth:`executor.engine.core.EngineCore.admit`
before admission control, so a refused query is never queued or counted against the model's
tenant, nor read (but for the query of a key the engine accepted at that front before, which
the front let in on its own and the engine checks with the query: a key revoked since costs
one read body per front and model), and a query that passes is admitted and fairly queued as
the tenant whose key it carried — which is the model's tenant, the one every share on the
node is accounted to.

- no credential: :class:`Unauthenticated` (401);
- a credential that is no usable key of the model's tenant (another tenant's, revoked,
  expired, made up): :class:`NotPermitted` (403);
- no document received yet (an API-mode daemon that started with neither the API nor a saved
  document): :class:`Unauthenticated`, saying so.

A revoked key leaves the document at the API's next long-poll wake-up; the daemon swaps the
new table in whole (one reference assignment, safe across threads).

A daemon serving a plan file (standalone mode) has no API to learn keys from: it runs
:data:`OPEN`, accepting every query, and says so in its log at start.
"""

from __future__ import annotations

import hmac
import threading
from collections.abc import Mapping

from executor.scheduling.errors import NotPermitted, Unauthenticated
from executor.wire.credentials import CredentialDocument, key_digest, salted

BEARER = "bearer "
# Digests of keys seen to be valid, kept so a tenant's steady traffic costs one dict lookup,
# not an HMAC per query; bounded, and emptied whenever a new document arrives.
MAX_REMEMBERED = 4096


def presented_digest(authorization: str | None) -> str | None:
    """The sha256 of the bearer key in an ``Authorization`` header, or None without one."""
    if authorization is None or authorization[: len(BEARER)].lower() != BEARER:
        return None
    key = authorization[len(BEARER) :].strip()
    return key_digest(key) if key else None


class CredentialTable:
    """One credential document, ready to check against."""

    def __init__(self, document: CredentialDocument) -> None:
        self.document = document
        self._salt = document.salt
        self._tenants: Mapping[str, frozenset[str]] = {
            tenant: frozenset(entries) for tenant, entries in document.tenants.items()
        }
        self._known: dict[str, str] = {}  # digest -> its tenant, for digests found valid

    def tenant_of(self, digest: str) -> str | None:
        """The tenant whose usable key has sha256 ``digest``, or None."""
        tenant = self._known.get(digest)
        if tenant is not None:
            return tenant
        entry = salted(self._salt, digest)
        for tenant, entries in self._tenants.items():
            if entry in entries:
                if len(self._known) < MAX_REMEMBERED:
                    self._known[digest] = tenant
                return tenant
        return None


class Credentials:
    """The node's current table, and the check the engine calls on every admission."""

    def __init__(self, *, enforce: bool = True) -> None:
        self.enforce = enforce
        self._table: CredentialTable | None = None
        self._lock = threading.Lock()  # serialises updates; checks read one reference

    @property
    def document(self) -> CredentialDocument | None:
        table = self._table
        return table.document if table is not None else None

    def update(self, document: CredentialDocument) -> None:
        with self._lock:
            self._table = CredentialTable(document)

    def check(self, tenant: str, digest: str | None) -> None:
        """Return if ``digest`` is a usable key's of ``tenant``; raise Unauthenticated or
        NotPermitted otherwise (see the module docstring)."""
        if not self.enforce:
            return
        if digest is None:
            raise Unauthenticated(
                "this model needs a key of its tenant: send Authorization: Bearer <key>"
            )
        table = self._table
        if table is None:
            raise Unauthenticated(
                "this node has not received its credentials from the control plane yet"
            )
        owner = table.tenant_of(digest)
        if owner is None or not hmac.compare_digest(owner, tenant):
            raise NotPermitted("the credential is no usable key of this model's tenant")


# A daemon with no control plane to learn keys from (a plan file) accepts every query.
OPEN = Credentials(enforce=False)
