"""``gpufair.client``: a tenant's queries sent straight to the daemons, routed as the gateway
routes them, with no extra hop.

:class:`Client` follows the routing table of the tenant's own models (``GET /v1/routes/me``,
long-polled with the tenant's API key on an event loop of its own, in a background thread) and
sends each query to the least-loaded live replica of its model (:mod:`gpufair.routing`), with
the key the daemons check (the API key, or an inference-only key as ``query_key``). A query
whose daemon cannot be reached (connection refused, reset or not accepted within the connect
timeout) or that cannot serve the model now (503 or 404, :data:`gpufair.routing.
TRY_ANOTHER_REPLICA`) is sent once more, to another replica; a 429 is returned
as it is (its ``Retry-After`` says when to come back), and so are 401 and 403. A daemon that
has not answered within ``timeout_s`` fails the query (504), never retried: it may be running.
Use it from services that can reach every node; use ``gpufair gateway`` for clients outside
the cluster, in other languages, or behind a single address.

The constructor waits up to ``ready_timeout_s`` for the first table. An API that refuses the
key (401, 403: a wrong, revoked or expired key) raises :class:`KeyRefused` at once; an
API that cannot be reached does not: the client keeps trying in the background and its
queries fail with 503, saying why, until a table comes (:meth:`Client.wait_ready`). Later
failures of the pull keep the last table; each is logged once, when it starts or changes.
One client may be shared by threads. ``close()`` (or leaving its ``with`` block) ends the
long-poll at once and closes every connection.

::

    with Client("http://api:8080", api_key="gft_...", query_key="gfi_...") as client:
        scores = client.infer("17", query)  # an executor.features.Query
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
from types import TracebackType

import httpx
import numpy as np

from executor.codec import query_to_oip
from executor.features import Query
from executor.wire import oip
from executor.wire.apilink import ApiLink
from gpufair.routes_pull import RoutesPullFailed, pull_routes
from gpufair.routing import ROUTES_WAIT_S, TRY_ANOTHER_REPLICA, Routes

log = logging.getLogger(__name__)

ROUTES_PATH = "/v1/routes/me"
MAX_BACKOFF_S = 10.0
# A refused key is retried this rarely: a revoked key is not coming back, and every refusal
# counts against the failed credentials of the service's address, which past the API's limit
# (30 a minute by default) gets 429 for every token it presents, other tenants' too.
REFUSED_RETRY_S = 60.0
CLOSE_WAIT_S = 5.0  # how long close() waits for the follower's thread to end
INFERENCE_KEY_PREFIX = "gfi_"  # api.auth's: such a key queries daemons, never the API


# Connections to the daemons a client holds at most (httpx's default): a query that finds
# them all busy for timeout_s fails with 503 saying so.
MAX_CONNECTIONS = 100


def retry_delay_s(failures: int, rng: random.Random) -> float:
    """The wait before the next pull after ``failures`` failed in a row: doubling from
    0.25-0.5 s up to MAX_BACKOFF_S, times a random factor in [0.5, 1), so that the many
    services whose clients lost the API together (a restart) do not come back in one instant."""
    return min(MAX_BACKOFF_S, 0.25 * 2 ** min(failures, 16)) * rng.uniform(0.5, 1.0)


class QueryFailed(RuntimeError):
    """A query that got no scores: ``status`` is the HTTP status (0: no replica answered;
    503 with no routing table yet, or with every connection of the client busy)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class KeyRefused(RuntimeError):
    """The API refused the key the routing table is read with (``status`` 401: unknown,
    revoked or expired; 403: a token that is not a tenant's, such as a node's)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class Client:
    """Queries to a tenant's models (see the module docstring). Thread-safe; close it, or use
    it as a context manager."""

    def __init__(
        self,
        api_url: str,
        *,
        api_key: str,
        query_key: str | None = None,
        timeout_s: float = 30.0,
        routes_wait_s: float = ROUTES_WAIT_S,
        ready_timeout_s: float = 10.0,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        """Follow the routing table at ``api_url`` with ``api_key`` (the tenant's ``gft_``
        API key) and query with ``query_key`` (default: ``api_key``). A daemon gets
        ``timeout_s`` per read or write of a query and ``min(timeout_s, 2)`` to accept its
        connection; at most ``max_connections`` queries are sent at once, and one that finds
        no connection free within ``timeout_s`` fails (503). Raises KeyRefused when the API
        refuses ``api_key``, ValueError for an inference-only key as ``api_key`` (the API would
        refuse it as unknown)."""
        if api_key.startswith(INFERENCE_KEY_PREFIX):
            raise ValueError(
                "api_key is an inference-only key, which cannot read the routing table: pass "
                "the tenant's API key (gft_...) as api_key and this one as query_key"
            )
        self.routes = Routes()
        self._api_url = api_url.rstrip("/")
        self._api_key = api_key
        self._wait_s = routes_wait_s
        self._pull_error: str | None = None  # why the last pull failed; None once one succeeds
        self._rng = random.Random()  # the retries' jitter
        self._refused: KeyRefused | None = None
        self._received = threading.Event()  # a table came
        self._settled = threading.Event()  # a table came, or the API refused the key
        self._max_connections = max_connections
        self._daemons = httpx.Client(
            headers={"Authorization": f"Bearer {query_key or api_key}"},
            timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 2.0)),
            limits=httpx.Limits(max_connections=max_connections),
        )
        # The long-poll runs as a task on a loop of its own, so that close() can cancel it
        # mid-wait: a blocking request in a thread cannot be interrupted.
        self._loop = asyncio.new_event_loop()
        self._follower = self._loop.create_task(self._follow())
        self._thread = threading.Thread(target=self._run, name="gpufair-routes", daemon=True)
        self._thread.start()
        if not self._settled.wait(ready_timeout_s):
            log.warning("no routing table from %s within %g s (%s); queries fail with 503 "
                        "until one comes", self._api_url, ready_timeout_s,
                        self._pull_error or "no answer yet")  # fmt: skip
        elif self._refused is not None and not self.routes.received:
            self.close()
            raise self._refused

    def wait_ready(self, timeout_s: float) -> bool:
        """Whether a routing table has come, waiting up to ``timeout_s`` for one (a readiness
        probe's question)."""
        return self._received.wait(timeout_s)

    def post(
        self, model: str, path: str, content: bytes, headers: dict[str, str]
    ) -> httpx.Response:
        """POST ``content`` to ``path`` (``/v2/models/{model}/infer`` or the like) on a replica
        of ``model``; the daemon's response. Raises QueryFailed when no replica answered."""
        tried: set[str] = set()
        refused: httpx.Response | None = None
        failure = "no live replica now"
        for attempt in range(2):
            pick = self.routes.pick(model, frozenset(tried))
            if pick is None:
                break
            tried.add(pick.url)
            try:
                response = self._daemons.post(pick.url + path, content=content, headers=headers)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                # The query never reached the daemon: gone, or its host down.
                self.routes.failed(pick.url)
                failure = f"node {pick.node}: {exc.__class__.__name__}: {exc}"
                log.warning("%s; held dead for a while, query sent elsewhere", failure)
                continue
            except httpx.PoolTimeout as exc:
                # Not the node's fault: this client had no connection free for the query.
                raise QueryFailed(
                    f"all {self._max_connections} connections of this client are busy with "
                    "queries: send fewer at once, or make the client with more max_connections",
                    503,
                ) from exc
            except httpx.TimeoutException as exc:
                raise QueryFailed(f"node {pick.node} did not answer: {exc}", 504) from exc
            except httpx.TransportError as exc:
                self.routes.failed(pick.url)
                failure = f"node {pick.node}: {exc.__class__.__name__}: {exc}"
                log.warning("%s; held dead for a while, query sent elsewhere", failure)
                continue
            finally:
                self.routes.done(pick)
            if response.status_code in TRY_ANOTHER_REPLICA and attempt == 0:
                refused = response
                continue
            return response
        if refused is not None:
            return refused
        if not self.routes.received:
            raise QueryFailed(f"no routing table yet from {self._api_url} "
                              f"({self._pull_error or 'no answer yet'})", 503)  # fmt: skip
        if not self.routes.knows(model):
            raise QueryFailed(f"model {model!r} is not in your routing table (a model is named "
                              "by its id, as POST /v1/models answered)", 404)
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

    def _run(self) -> None:
        try:
            self._loop.run_until_complete(self._follower)
        except asyncio.CancelledError:
            pass
        finally:
            self._loop.close()

    async def _follow(self) -> None:
        """Long-poll the routing table until cancelled; a failed pull is retried after a
        backoff (a refused key after REFUSED_RETRY_S), the last table kept; a table without an
        ETag to long-poll with is pulled again only after the long-poll's wait (at most
        MAX_BACKOFF_S), not at once."""
        async with httpx.AsyncClient(
            base_url=self._api_url,
            headers={"Authorization": f"Bearer {self._api_key}"},
            timeout=httpx.Timeout(10.0, read=self._wait_s + 10.0),
        ) as api:
            failures = 0
            link = ApiLink("routing table pulls", log)
            while True:
                try:
                    followable = await pull_routes(api, ROUTES_PATH, self.routes, self._wait_s)
                except RoutesPullFailed as exc:
                    failures += 1
                    backoff = retry_delay_s(failures, self._rng)
                    if exc.status in (401, 403):
                        backoff = REFUSED_RETRY_S
                        self._refused = KeyRefused(str(exc), exc.status)
                    self._pull_error = str(exc)
                    link.failed(self._pull_error, f"retry in {backoff:.1f}s")
                    if self._refused is not None:
                        self._settled.set()
                    await asyncio.sleep(backoff)
                    continue
                except Exception as exc:  # a bug must not end the follow, freezing the table
                    failures += 1
                    backoff = retry_delay_s(failures, self._rng)
                    log.exception("routing table pull failed unexpectedly; retry in %.1fs",
                                  backoff)  # fmt: skip
                    self._pull_error = f"{exc.__class__.__name__}: {exc}"
                    link.failed(self._pull_error, "logged above", announced=True)  # every time
                    await asyncio.sleep(backoff)
                    continue
                link.succeeded()
                failures, self._pull_error, self._refused = 0, None, None
                self._received.set()
                self._settled.set()
                if not followable:  # no ETag to long-poll with: the next pull would not wait
                    await asyncio.sleep(min(self._wait_s, MAX_BACKOFF_S))

    def close(self) -> None:
        """End the routing table's long-poll and close every connection; idempotent."""
        if self._thread.is_alive():
            try:
                self._loop.call_soon_threadsafe(self._follower.cancel)
            except RuntimeError:  # the loop ended between the check and the call
                pass
            self._thread.join(CLOSE_WAIT_S)
        self._daemons.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
