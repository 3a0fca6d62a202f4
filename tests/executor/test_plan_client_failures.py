"""The daemon's API loop when the API misbehaves: it hangs, answers 5xx or garbage, or a
thread meets an error nobody planned for.

Each test runs a :class:`PlanClient` against a real HTTP server on the loopback that stands in
for the API's node routes and answers what the test scripts. What a node operator relies on:
retries back off with jitter and are logged once per change, every request has a timeout, an
answer without an ETag is not fetched again at once, no thread dies while the daemon serves,
and ``stop()`` does not wait for replies that may never come.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from executor import plan_client
from executor.credentials import Credentials
from executor.fake import FakeBackend
from executor.plan_client import FIRST_BACKOFF_S, MAX_BACKOFF_S, PlanClient, backoff_s
from executor.scheduling import NodeRuntime, SchedulerConfig
from tests.executor.scheduling_helpers import plan, seat

TOKEN = "node-secret"
NODE_ROUTES = "/v1/nodes/node-a"
PLAN_PATH = f"{NODE_ROUTES}/plan"
HEARTBEAT_PATH = f"{NODE_ROUTES}/heartbeat"
CREDENTIALS_PATH = f"{NODE_ROUTES}/credentials"
ARTIFACT_PATH = f"{NODE_ROUTES}/artifacts/7"
WAIT_S = 10.0  # how long a test waits for what it expects (it comes in well under a second)

Reply = tuple[int, bytes, dict[str, str]]


class ScriptedApi:
    """The API's node routes on a loopback port. Plans and credentials are long-polled with
    ETags as the API does; ``failure`` (every route) or ``plan_reply`` (plan pulls), when set,
    is answered instead. Every request is recorded as (monotonic time, method, path, status),
    and the plan version each heartbeat reports in ``reported``: what tests wait on."""

    def __init__(self) -> None:
        self.failure: Reply | None = None
        self.plan_reply: Reply | None = None
        self.plan_document: dict[str, Any] | None = None
        self.requests: list[tuple[float, str, str, int]] = []
        self.reported: list[int | None] = []
        self.refused: list[dict[str, Any] | None] = []  # each heartbeat's, beside ``reported``
        self.changed = threading.Condition()
        credentials = {"node": "node-a", "salt": "5a" * 32, "tenants": {}}
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _answer(self) -> None:
                url = urlsplit(self.path)
                sent = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                status, body, headers = api._reply(
                    self.command, url.path, self.headers.get("If-None-Match"),
                    float(parse_qs(url.query).get("wait", ["0"])[0]),
                    json.dumps(credentials).encode(),
                )  # fmt: skip
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                with api.changed:
                    api.requests.append((time.monotonic(), self.command, url.path, status))
                    if url.path == HEARTBEAT_PATH and status == 200:
                        beat = json.loads(sent)
                        api.reported.append(beat["plan_version"])
                        api.refused.append(beat["refused"])
                    api.changed.notify_all()

            do_GET = do_POST = do_PUT = _answer

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def _reply(
        self, method: str, path: str, if_none_match: str | None, wait_s: float, keys: bytes
    ) -> Reply:
        """What a request gets: a scripted answer, else the API's, a long-poll waiting up to
        ``wait_s`` while the caller's ETag is current."""
        deadline = time.monotonic() + wait_s
        with self.changed:
            while True:
                if self.failure is not None:
                    return self.failure
                if path == PLAN_PATH and self.plan_reply is not None:
                    return self.plan_reply
                if path == PLAN_PATH and self.plan_document is not None:
                    etag, body = f'"plan-{self.plan_document["version"]}"', self.plan_document
                    current: Reply = (200, json.dumps(body).encode(), {"ETag": etag})
                elif path == CREDENTIALS_PATH:
                    etag = '"keys-1"'
                    current = (200, keys, {"ETag": etag})
                elif path == PLAN_PATH:
                    etag, current = "", (404, b"{}", {})
                elif path == ARTIFACT_PATH and method == "GET":
                    return 200, b"torchscript bytes", {}
                elif path in (HEARTBEAT_PATH, f"{NODE_ROUTES}/profiles"):
                    return 200, b"{}", {}
                else:
                    return 404, b"{}", {}
                left = deadline - time.monotonic()
                if if_none_match != etag or left <= 0:
                    return (304, b"", {"ETag": etag}) if if_none_match == etag else current
                self.changed.wait(left)

    def script(self, **changes: Any) -> None:
        """Change what the routes answer, waking the long-polls that wait."""
        with self.changed:
            for name, value in changes.items():
                setattr(self, name, value)
            self.changed.notify_all()

    def count(self, path: str, status: int | None = None) -> int:
        return sum(1 for _, _, p, s in self.requests if p == path and status in (None, s))

    def wait_until(self, condition: Callable[[], bool]) -> None:
        """Wait (on the server's requests) until ``condition`` holds; fail after WAIT_S."""
        with self.changed:
            assert self.changed.wait_for(condition, timeout=WAIT_S), self.requests[-10:]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class SilentApi:
    """Accepts connections and never answers a byte: an API hung behind its load balancer."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._connections: list[socket.socket] = []
        self._accepted = threading.Condition()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):  # the listener closed
            while True:
                connection, _ = self._listener.accept()
                with self._accepted:
                    self._connections.append(connection)
                    self._accepted.notify_all()

    def wait_connections(self, count: int) -> None:
        with self._accepted:
            assert self._accepted.wait_for(lambda: len(self._connections) >= count, WAIT_S)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        for connection in self._connections:
            connection.close()


@pytest.fixture
def api() -> Iterator[ScriptedApi]:
    server = ScriptedApi()
    yield server
    server.close()


@pytest.fixture
def silent() -> Iterator[SilentApi]:
    server = SilentApi()
    yield server
    server.close()


@pytest.fixture
def runtime() -> Iterator[NodeRuntime]:
    node = NodeRuntime(FakeBackend(row_s=0, batch_s=0), SchedulerConfig(batch_max_delay_s=0))
    yield node
    node.close()


@pytest.fixture
def quick_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Backoff from 10 ms up to 80 ms, so a test sees many retries in a fraction of a second.
    (``raising=False``: a plan client without these knobs fails the test, not the fixture.)"""
    monkeypatch.setattr(plan_client, "FIRST_BACKOFF_S", 0.01, raising=False)
    monkeypatch.setattr(plan_client, "MAX_BACKOFF_S", 0.08)


def client_for(
    runtime: NodeRuntime, url: str, tmp_path: Path, **options: Any
) -> PlanClient:
    return PlanClient(
        runtime, api_url=url, node="node-a", token=TOKEN, artifact_dir=tmp_path / "artifacts",
        rng=random.Random(5), **options,
    )  # fmt: skip


def messages(caplog: pytest.LogCaptureFixture, level: int, text: str) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.levelno == level and text in r.getMessage()
    ]


def test_retry_delays_double_up_to_the_cap_and_are_spread_by_jitter() -> None:
    rng = random.Random(11)
    for failures in range(1, 12):
        ceiling = min(MAX_BACKOFF_S, FIRST_BACKOFF_S * 2 ** (failures - 1))
        assert ceiling / 2 <= backoff_s(failures, rng) < ceiling
    # Nodes that lost the API together do not all retry at the same instant.
    at_the_cap = {backoff_s(50, random.Random(seed)) for seed in range(8)}
    assert len(at_the_cap) == 8 and max(at_the_cap) < MAX_BACKOFF_S


def test_stop_does_not_wait_for_replies_a_hung_api_never_sends(
    silent: SilentApi, runtime: NodeRuntime, tmp_path: Path
) -> None:
    client = client_for(
        runtime, silent.url, tmp_path, heartbeat_s=0.05, long_poll_s=30.0,
        credentials=Credentials(),
    )  # fmt: skip
    client.start()
    silent.wait_connections(3)  # the plan and credential long-polls and a heartbeat
    began = time.monotonic()
    client.stop()
    # Before: each of the three threads was joined for 2 s in turn (SIGTERM took 4-6 s).
    assert time.monotonic() - began < 1.0


def test_a_heartbeat_to_a_hung_api_times_out_long_before_a_long_poll_would(
    silent: SilentApi, runtime: NodeRuntime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(plan_client, "REQUEST_TIMEOUT_S", 0.3, raising=False)
    client = client_for(runtime, silent.url, tmp_path, long_poll_s=30.0)
    outcome: list[BaseException] = []
    done = threading.Event()

    def beat() -> None:
        try:
            client.heartbeat()
        except httpx.HTTPError as exc:
            outcome.append(exc)
        done.set()

    threading.Thread(target=beat, daemon=True).start()
    # Before: a heartbeat had the long-poll's read timeout (30 s + 10 s).
    assert done.wait(5.0)
    assert len(outcome) == 1 and isinstance(outcome[0], httpx.ReadTimeout)
    client.stop()


@pytest.mark.usefixtures("quick_backoff")
def test_a_failing_api_is_logged_once_when_it_fails_and_once_when_it_is_back(
    api: ScriptedApi, runtime: NodeRuntime, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="executor.plan_client")
    api.script(failure=(503, b'{"error": "database unavailable"}', {}))
    client = client_for(
        runtime, api.url, tmp_path, heartbeat_s=0.02, long_poll_s=0.3, credentials=Credentials()
    )
    client.start()
    try:
        api.wait_until(
            lambda: api.count(PLAN_PATH) >= 5 and api.count(HEARTBEAT_PATH) >= 5
            and api.count(CREDENTIALS_PATH) >= 5
        )  # fmt: skip
        api.script(failure=None, plan_document=plan([seat(0, "a")], version=1).to_dict())
        # Each thread asked again after its first success since (so it has logged that): the
        # heartbeat after the one reporting v1, and a long-poll after the first 304 of each.
        api.wait_until(
            lambda: api.reported.count(1) >= 2 and api.count(PLAN_PATH, 304) >= 1
            and api.count(CREDENTIALS_PATH, 304) >= 2
        )  # fmt: skip
    finally:
        client.stop()
    for calls in ("plan pulls", "heartbeats", "credential pulls"):
        (failing,) = messages(caplog, logging.WARNING, f"{calls} failing")
        assert "HTTP 503 Service Unavailable" in failing
        assert len(messages(caplog, logging.INFO, f"{calls} succeed again")) == 1
        assert len(messages(caplog, logging.DEBUG, f"{calls} failed again")) >= 3
    assert not messages(caplog, logging.WARNING, "heartbeat failed")  # no line per retry


@pytest.mark.usefixtures("quick_backoff")
def test_an_answer_without_an_etag_is_not_fetched_again_at_once_and_the_plan_serves_on(
    api: ScriptedApi, runtime: NodeRuntime, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    api.script(plan_document=plan([seat(0, "a")], version=1).to_dict())
    client = client_for(runtime, api.url, tmp_path, heartbeat_s=0.02, long_poll_s=5.0)
    client.start()
    try:
        api.wait_until(lambda: 1 in api.reported)
        # A proxy in the way answers its own page, 200 and no ETag to long-poll with.
        api.script(plan_reply=(200, b"<html>maintenance</html>", {}))
        api.wait_until(lambda: api.count(PLAN_PATH) >= 6)
        garbage = [t for t, _, path, _ in api.requests if path == PLAN_PATH][1:6]
        # Before: asked again at once, a few hundred times a second, an error line each.
        assert garbage[-1] - garbage[0] >= 0.05  # 4 delays, 75 ms at the least
        assert runtime.plan_version == 1
        assert len(messages(caplog, logging.ERROR, "refused, keeping the current one")) == 1
        api.script(plan_reply=None, plan_document=plan([seat(0, "b")], version=2).to_dict())
        api.wait_until(lambda: 2 in api.reported)
    finally:
        client.stop()


@pytest.mark.usefixtures("quick_backoff")
def test_an_unexpected_error_neither_ends_plan_pulls_nor_heartbeats(
    api: ScriptedApi, runtime: NodeRuntime, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="executor.plan_client")
    client = PlanClient(
        runtime, api_url=api.url, node="node-a", token=TOKEN, heartbeat_s=0.02,
        long_poll_s=5.0, artifact_dir=tmp_path / "not-a-directory", rng=random.Random(5),
    )  # fmt: skip
    (tmp_path / "not-a-directory").write_text("")  # so the artifact cannot be stored
    report = client.report
    beats = iter([RuntimeError("a bug in the report")])

    def report_once_broken() -> Any:
        for error in beats:
            raise error
        return report()

    client.report = report_once_broken  # type: ignore[method-assign]
    api.script(plan_document=plan([seat(0, "t", artifact="api:7")], version=1).to_dict())
    client.start()
    try:
        api.wait_until(lambda: api.count(ARTIFACT_PATH) >= 3)  # retried: the thread lives
        api.wait_until(lambda: api.count(HEARTBEAT_PATH) >= 1)
        api.script(plan_document=plan([seat(0, "a")], version=2).to_dict())
        api.wait_until(lambda: 2 in api.reported)
    finally:
        client.stop()
    (failing,) = [r for r in caplog.records if "plan pulls failing" in r.getMessage()]
    assert failing.exc_info is not None  # the traceback of what nobody planned for
    (failing,) = [r for r in caplog.records if "heartbeats failing" in r.getMessage()]
    assert "a bug in the report" in failing.getMessage() and failing.exc_info is not None


def test_a_plan_that_is_not_applied_is_reported_in_the_heartbeat_until_one_is(
    api: ScriptedApi, runtime: NodeRuntime, tmp_path: Path
) -> None:
    """A plan the daemon could not apply for a reason of its own (an artifact the API cannot
    serve, another node's plan) was only logged: the API saw the node serve its old plan with
    no word of why. The heartbeat's ``refused`` names it until a plan applies."""
    api.script(plan_document=plan([seat(0, "a")], version=1).to_dict())
    client = client_for(runtime, api.url, tmp_path, heartbeat_s=0.02, long_poll_s=5.0)
    client.start()

    def reported_refusal(version: int) -> dict[str, Any] | None:
        return next((r for r in reversed(api.refused) if r and r["version"] == version), None)

    try:
        api.wait_until(lambda: 1 in api.reported)
        assert api.refused[-1] is None
        api.script(plan_document=plan([seat(0, "t", artifact="api:8")], version=2).to_dict())
        api.wait_until(lambda: reported_refusal(2) is not None)
        reason = reported_refusal(2)["reason"]  # type: ignore[index]
        assert "artifact" in reason and "HTTP 404" in reason, reason
        elsewhere = plan([seat(0, "a")], version=3).to_dict() | {"node": "node-b"}
        api.script(plan_document=elsewhere)
        api.wait_until(lambda: reported_refusal(3) is not None)
        assert "this is node 'node-a'" in reported_refusal(3)["reason"]  # type: ignore[index]
        assert runtime.plan_version == 1
        api.script(plan_document=plan([seat(0, "b")], version=4).to_dict())
        api.wait_until(lambda: 4 in api.reported)
        seen = len(api.reported)
        api.wait_until(lambda: len(api.reported) > seen)  # a heartbeat sent after it applied
        assert api.reported[-1] == 4 and api.refused[-1] is None
    finally:
        client.stop()


@pytest.mark.usefixtures("quick_backoff")
def test_a_refused_token_is_asked_again_rarely_while_a_plan_serves(
    api: ScriptedApi, runtime: NodeRuntime, tmp_path: Path
) -> None:
    """A node token rotated while its daemon serves: the API answers 401 until the pod restarts
    with the new one. At its usual pace (heartbeats every few seconds, pulls backing off to
    30 s) one such daemon sent ~22 refused tokens a minute, and two locked every client on
    their host out of the API (30 a minute per address): each thread now waits
    TOKEN_REFUSED_RETRY_S after a 401, the plan serving on."""
    api.script(plan_document=plan([seat(0, "a")], version=1).to_dict())
    client = client_for(runtime, api.url, tmp_path, heartbeat_s=0.02, long_poll_s=0.2,
                        credentials=Credentials())  # fmt: skip
    client.start()
    try:
        api.wait_until(lambda: 1 in api.reported)
        api.script(failure=(401, b'{"error": {"message": "unknown token"}}', {}))
        api.wait_until(lambda: all(api.count(path, 401) >= 1
                                   for path in (PLAN_PATH, HEARTBEAT_PATH, CREDENTIALS_PATH)))
        time.sleep(1.0)  # at the usual pace, dozens more refusals would come within this
        refused = {path: api.count(path, 401)
                   for path in (PLAN_PATH, HEARTBEAT_PATH, CREDENTIALS_PATH)}  # fmt: skip
        assert refused == dict.fromkeys(refused, 1), refused
        assert runtime.plan_version == 1
    finally:
        client.stop()
