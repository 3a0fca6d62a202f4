"""``gpufair.client``: a tenant's queries sent straight to the daemons, routed as the gateway
routes them, with no extra hop.

:class:`Client` follows the routing table of the tenant's own models (``GET /v1/routes/me``,
long-polled in a background thread with the tenant's API key) and sends each query to the
least-loaded live replica of its model (:mod:`gpufair.routing`), with the key the daemons
check (the API key, or an inference-only key). A query refused with 503 or whose daemon failed
at the transport is sent once more, to another replica; a 429 is returned as it is (its
``Retry-After`` says when to come back). Use it from services that can reach every node; use
``gpufair gateway`` for clients outside the cluster, in other languages, or behind a single
address.

::

    with Client("http://api:8080", api_key="gft_...") as client:
        scores = client.infer("17", query)  # an executor.features.Query
"""

from __future__ import annotations

import logging
import threading
from types import TracebackType

import httpx
import numpy as np

from executor.codec import query_to_oip
from executor.features import Query
from executor.wire import oip
from executor.wire.routes import RoutingTable
from gpufair.routing import ROUTES_WAIT_S, Routes

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 10.0


class QueryFailed(RuntimeError):
    """A query that got no scores: ``status`` is the HTTP status (0: no replica answered)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class Client:
    """Queries to a tenant's models (see the module docstring). Thread-safe."""

    def __init__(
        self,
        api_url: str,
        *,
        api_key: str,
        query_key: str | None = None,
        timeout_s: float = 30.0,
        routes_wait_s: float = ROUTES_WAIT_S,
        ready_timeout_s: float = 10.0,
    ) -> None:
        self.routes = Routes()
        self._wait_s = routes_wait_s
        self._api = httpx.Client(
            base_url=api_url.rstrip("/"),
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=httpx.Timeout(10.0, read=routes_wait_s + 10.0),
        )
        self._daemons = httpx.Client(
            headers={"Authorization": f"Bearer {query_key or api_key}"},
            timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 2.0)),
        )
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._follow, name="gpufair-routes", daemon=True)
        self._thread.start()
        self._ready.wait(ready_timeout_s)

    def post(
        self, model: str, path: str, content: bytes, headers: dict[str, str]
    ) -> httpx.Response:
        """POST ``content`` to ``path`` (``/v2/models/{model}/infer`` or the like) on a replica
        of ``model``; the daemon's response. Raises QueryFailed when no replica answered."""
        tried: set[str] = set()
        refused: httpx.Response | None = None
        failure = "no live replica"
        for attempt in range(2):
            pick = self.routes.pick(model, frozenset(tried))
            if pick is None:
                break
            tried.add(pick.url)
            try:
                response = self._daemons.post(pick.url + path, content=content, headers=headers)
            except httpx.TimeoutException as exc:
                raise QueryFailed(f"node {pick.node} did not answer: {exc}", 504) from exc
            except httpx.TransportError as exc:
                self.routes.failed(pick.url)
                failure = f"node {pick.node}: {exc.__class__.__name__}: {exc}"
                continue
            finally:
                self.routes.done(pick)
            if response.status_code == 503 and attempt == 0:
                refused = response
                continue
            return response
        if refused is not None:
            return refused
        if not self.routes.knows(model):
            raise QueryFailed(f"model {model!r} is not in your routing table", 404)
        raise QueryFailed(f"model {model!r}: {failure}", 0)

    def infer(self, model: str, query: Query) -> np.ndarray:
        """The query's scores, one per candidate; QueryFailed for any answer but 200."""
        content, header_length = query_to_oip(query)
        headers = {"content-type": oip.BINARY_CONTENT_TYPE}
        if header_length is not None:
            headers[oip.HEADER_LENGTH] = str(header_length)
        response = self.post(model, f"/v2/models/{model}/infer", content, headers)
        if response.status_code != 200:
            raise QueryFailed(f"HTTP {response.status_code}: {response.text[:500]}",
                              response.status_code)  # fmt: skip
        length = response.headers.get(oip.HEADER_LENGTH)
        outputs = oip.decode_reply(response.content, None if length is None else int(length))
        return outputs["scores"]

    def _follow(self) -> None:
        failures = 0
        while not self._stop.is_set():
            headers = {"If-None-Match": self.routes.etag} if self.routes.etag else {}
            try:
                response = self._api.get(
                    "/v1/routes/me", params={"wait": f"{self._wait_s:g}"}, headers=headers
                )
                if response.status_code != 304:
                    response.raise_for_status()
                    table = RoutingTable.model_validate_json(response.content)
                    self.routes.update(table, response.headers.get("ETag"))
                self._ready.set()
                failures = 0
            except (httpx.HTTPError, ValueError) as exc:
                failures += 1
                backoff = min(MAX_BACKOFF_S, 0.25 * 2**failures)
                log.warning("routing table pull failed (%s); retry in %.1fs", exc, backoff)
                self._stop.wait(backoff)

    def close(self) -> None:
        self._stop.set()
        self._daemons.close()
        self._api.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
