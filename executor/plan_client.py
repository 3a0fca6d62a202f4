"""API mode of the daemon: pull this node's plan from the control plane, report heartbeats.

The daemon long-polls ``GET {api}/v1/nodes/{node}/plan?wait=S`` with ``If-None-Match`` set to
the ETag of the plan it serves: the API answers 304 when nothing changed within ``S`` seconds
and 200 with the new plan document as soon as one is stored. A new plan is parsed by
:meth:`NodePlan.from_dict` (the one parser) and applied by the runtime, which drains the old
version first. Every ``heartbeat_s`` it posts ``POST {api}/v1/nodes/{node}/heartbeat`` with
the plan version it serves and each replica's counters.

Replicas whose artifact is ``api:<model_id>`` (a tenant's uploaded TorchScript file) are
fetched from ``GET {api}/v1/nodes/{node}/artifacts/{model_id}`` into ``artifact_dir`` (named by
their SHA-256, so an unchanged file is downloaded once) and served as ``file:<path>``.

The API being down never stops serving: the last plan keeps running and every thread retries
with exponential backoff (``FIRST_BACKOFF_S`` doubling up to ``MAX_BACKOFF_S``, each delay cut
by a random factor in [0.5, 1) so that the nodes of a cluster that lost the API together do not
come back at the same instant). Each thread logs one line when its calls start failing or fail
otherwise, and one when they succeed again, not one per retry (the retries log at DEBUG). Every
request has a timeout (``REQUEST_TIMEOUT_S``; a long-poll ``LONG_POLL_GRACE_S`` past its
wait), so an API that accepts connections and never answers is noticed too. An answer the
daemon cannot long-poll on (no ETag) is retried only after a backoff, never at once, and an
unexpected error in a thread is logged with its traceback and retried the same way: no thread
dies while the daemon serves. A token the API rejects (401 or 403) is no outage:
each rejected pull logs one error saying so and what the daemon serves meanwhile; after
``TOKEN_REJECTED_TRIES`` in a row with no plan to serve, :attr:`PlanClient.token_rejected` is
set (``gpufair executor`` then exits non-zero), since nothing would ever be served. While
it serves a plan, a daemon whose token is refused with 401 (rotated, its pod not yet
restarted) asks again only every ``TOKEN_REFUSED_RETRY_S`` on each of its threads: the API
refuses every request from an address that presented 30 unknown tokens in a minute, a valid
one included, and a stale daemon retrying at its usual pace locked its host's other daemons
and clients out of the API (their credential pulls too). A plan
the API serves that does not parse is logged and skipped (its ETag is remembered, so it is not
fetched again until it changes).

Restarts. Every plan applied is saved with its ETag in ``state_dir`` (:class:`PlanState`:
written to a temporary file and renamed over the old one, so a daemon killed mid-write leaves
the previous state whole). On start :meth:`PlanClient.resume` applies the saved plan before
the API is asked, so a daemon restarted while the API is down serves at once, and the first
long-poll carries the saved ETag (304 when nothing changed meanwhile). The saved plan names its
``api:`` artifacts by their downloaded files, which is why the artifact cache sits in the state
directory too. A state file that cannot be read, or that belongs to another node or API URL,
is logged and ignored.

Profiles. Each applied plan is followed by ``PUT {api}/v1/nodes/{node}/profiles`` with the
memory each of its replicas measured when it loaded and, with the curves of a profile file
(:mod:`executor.profiles`), the curves of the plan's models that the file covers, before the
next long-poll; a failed transport or a 5xx is retried after the next plan pull (never in its
way), a refusal (4xx) is logged and not repeated.

Memory. A plan whose replicas do not fit a device's memory is refused by the runtime
(:class:`executor.scheduling.PlanRefused`): the last plan serves on, the ETag is kept so the
same plan is not fetched again, every heartbeat carries the refusal (``"refused": {"version",
"reason"}``) until a plan is applied, and the footprints the runtime predicted for the refused
plan's replicas are uploaded, so that the next solve places them where they fit.

SLA tallies. The API accepts a heartbeat's counts only for (tenant, model) pairs that a recent
plan of this node seats (403 otherwise), and the counts run since the daemon started; so
before a plan is applied the tallies are narrowed to its pairs and those of the plan it
replaces (whose draining queries still finish), and a heartbeat refused with 403 narrows them
to the served plan's pairs alone, so the next one is accepted.

Credentials. A third thread long-polls ``GET {api}/v1/nodes/{node}/credentials?wait=S`` the
same way (:mod:`executor.wire.credentials`: the salted hashes of the keys of the tenants the
node's plans seat) and hands each new document to the engine's
:class:`~executor.credentials.Credentials`, which checks every query against it. Its own
thread and a short wait (``CREDENTIALS_WAIT_S``) bound how long a revoked key keeps working: the
API answers the long-poll as soon as the document changes (it rechecks every second). Each
document is saved beside the plan (``credentials.json``, written the same atomic way), so a
daemon restarted while the API is down checks queries at once against the last keys it knew.
A plan that seats a tenant the document lacks makes the plan thread fetch the document before
applying it, so a newly seated tenant's first queries are not refused while the long-poll
catches up.

Both bodies are built from the contracts the API validates them with: a heartbeat is an
:class:`executor.wire.heartbeat.Heartbeat` (besides the replicas' counters it carries
``"sla": [{"tenant", "model", "received", "within_sla"}]``, the daemon's cumulative SLA
tallies per tenant and model, :meth:`ExecutorMetrics.sla_tallies`, and ``"served"``, what each
was served over the last minute with its p99 latency, :meth:`ExecutorMetrics.served_windows`;
both narrowed alike), a profile upload an
:class:`executor.wire.profiles.ProfilesPut`. A heartbeat the contract refuses is logged and
not sent; a load error longer than the contract takes is clipped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import random
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
from pydantic import ValidationError

from allocator.cluster.plan import NodePlan, PlanError
from allocator.errors import first_error
from executor.credentials import Credentials
from executor.metrics import ExecutorMetrics
from executor.profiles import ProfileCurve, plan_footprints, plan_profiles
from executor.scheduling import NodeRuntime, PlanRefused
from executor.wire.apilink import ApiLink
from executor.wire.credentials import CredentialDocument
from executor.wire.heartbeat import MAX_REASON_CHARS, Heartbeat, RefusedPlan, ReplicaReport
from executor.wire.names import MAX_ID
from executor.wire.profiles import ProfilesPut

log = logging.getLogger(__name__)

# Rejected plan pulls in a row, with no plan served, after which the daemon gives up.
TOKEN_REJECTED_TRIES = 3
REJECTED = (401, 403)

FIRST_BACKOFF_S = 1.0
MAX_BACKOFF_S = 30.0
# A thread's wait after the API refused the node's token (401) while a plan serves: three
# threads then cost the API's failed-credential limit (30 a minute per address) 3 a minute.
TOKEN_REFUSED_RETRY_S = 60.0
# Connect, each read and each write of every request but the long-polls; a long-poll's read may
# take its wait and this grace.
REQUEST_TIMEOUT_S = 10.0
LONG_POLL_GRACE_S = 10.0
# How long stop() waits for threads busy with something else than waiting on the API (applying
# a plan, saving state): a thread waiting on the API holds nothing and is not waited for.
STOP_WAIT_S = 2.0
STATE_FORMAT = 1
# The credential long-poll's wait: short, so that a lost connection is noticed soon too.
CREDENTIALS_WAIT_S = 10.0


def _token_refused(exc: BaseException) -> bool:
    """Whether the API answered the call with 401: the node's token is unknown to it."""
    return isinstance(exc, httpx.HTTPStatusError) and exc.response.status_code == 401


def backoff_s(failures: int, rng: random.Random) -> float:
    """The delay before the retry that follows ``failures`` failures in a row: exponential and
    capped, times a random factor in [0.5, 1) so that nodes that failed together spread out."""
    ceiling = min(MAX_BACKOFF_S, FIRST_BACKOFF_S * 2 ** min(max(failures - 1, 0), 16))
    return ceiling * rng.uniform(0.5, 1.0)


class StoppedError(Exception):
    """An API reply that came after :meth:`PlanClient.stop`: the thread ends without acting."""


def _failure(exc: BaseException) -> str:
    """What went wrong, the same for every retry of the same failure (so a retry that fails
    alike is not logged again): the status of an HTTP error, else the error itself."""
    if isinstance(exc, httpx.HTTPStatusError):
        response = exc.response
        return f"HTTP {response.status_code} {response.reason_phrase} from {exc.request.url.path}"
    return str(exc) or type(exc).__name__


def _version_of(document: object) -> int | None:
    """The ``version`` of a plan document that did not parse, when it names a plausible one."""
    version = document.get("version") if isinstance(document, dict) else None
    return version if isinstance(version, int) and 0 <= version <= MAX_ID else None


def write_atomically(directory: Path, path: Path, document: object) -> None:
    """Replace ``path`` with ``document`` as JSON (temporary file, fsync, rename), so a process
    killed mid-write leaves the previous file whole; raise OSError."""
    directory.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w") as out:
            json.dump(document, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable where supported
        handle = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(handle)
        finally:
            os.close(handle)


class PlanState:
    """The last applied plan and its ETag, kept in ``directory/plan.json`` across restarts."""

    def __init__(self, directory: Path, *, api_url: str, node: str) -> None:
        self.directory = directory
        self.path = directory / "plan.json"
        self.credentials_path = directory / "credentials.json"
        self._api_url = api_url.rstrip("/")
        self._node = node

    def save(self, plan: NodePlan, etag: str | None) -> None:
        """Replace the saved state atomically (temporary file, fsync, rename); raise OSError."""
        document = {
            "format": STATE_FORMAT,
            "api": self._api_url,
            "node": self._node,
            "etag": etag,
            "plan": plan.to_dict(),
        }
        write_atomically(self.directory, self.path, document)

    def save_credentials(self, document: CredentialDocument, etag: str | None) -> None:
        """Replace the saved credential document atomically; raise OSError."""
        write_atomically(
            self.directory,
            self.credentials_path,
            {"api": self._api_url, "etag": etag, "credentials": document.model_dump(mode="json")},
        )

    def load_credentials(self) -> tuple[CredentialDocument, str | None] | None:
        """The saved credential document and its ETag; None (logged) when there is none or it
        cannot be used."""
        try:
            saved = json.loads(self.credentials_path.read_text())
            if not isinstance(saved, dict) or saved.get("api") != self._api_url:
                raise ValueError(f"not a credential document of {self._api_url}")
            document = CredentialDocument.model_validate(saved.get("credentials"))
            if document.node != self._node:
                raise ValueError(f"node {document.node!r}'s credentials, not {self._node!r}'s")
            etag = saved.get("etag")
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:  # ValidationError and JSONDecodeError included
            log.error("saved credentials %s ignored: %s", self.credentials_path, exc)
            return None
        return document, etag if isinstance(etag, str) else None

    def load(self) -> tuple[NodePlan, str | None] | None:
        """The saved plan and ETag; None (logged) when there is none or it cannot be used."""
        for stale in self.directory.glob(".*-*.tmp"):  # left by a daemon killed mid-write
            with contextlib.suppress(OSError):
                stale.unlink()
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            log.info("no saved plan in %s: waiting for the API", self.path)
            return None
        except OSError as exc:
            log.error("saved plan %s ignored: cannot read it: %s", self.path, exc)
            return None
        try:
            document = json.loads(text)
            if not isinstance(document, dict) or document.get("format") != STATE_FORMAT:
                raise ValueError(f"not a plan state of format {STATE_FORMAT}")
            etag = document.get("etag")
            if etag is not None and not isinstance(etag, str):
                raise ValueError("etag: expected a string")
            plan = NodePlan.from_dict(document.get("plan"))
        except (ValueError, PlanError) as exc:  # JSONDecodeError is a ValueError
            log.error("saved plan %s ignored: %s", self.path, exc)
            return None
        if document.get("api") != self._api_url or plan.node != self._node:
            log.warning(
                "saved plan %s ignored: it is node %r's plan from %s, this is node %r of %s",
                self.path, plan.node, document.get("api"), self._node, self._api_url,
            )  # fmt: skip
            return None
        return plan, etag


def _seated(plan: NodePlan | None) -> set[tuple[str, str]]:
    """The (tenant, model id) pairs a plan seats."""
    if plan is None:
        return set()
    return {(s.replica.tenant, s.replica.model_id) for _, s in plan.replicas() if s.replica}


class PlanClient:
    """Three background threads: the plan long-poll (with profile uploads), the credential
    long-poll (with ``credentials``) and the heartbeat."""

    def __init__(
        self,
        runtime: NodeRuntime,
        *,
        api_url: str,
        node: str,
        token: str,
        heartbeat_s: float = 5.0,
        long_poll_s: float = 30.0,
        artifact_dir: Path | None = None,
        state_dir: Path | None = None,
        profiles: dict[str, ProfileCurve] | None = None,
        metrics: ExecutorMetrics | None = None,
        credentials: Credentials | None = None,
        advertise_url: str | None = None,
        transport: httpx.BaseTransport | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._runtime = runtime
        self._rng = rng or random.Random()  # the backoff's jitter; tests pass a seeded one
        if artifact_dir is None:
            artifact_dir = (
                state_dir / "artifacts"
                if state_dir is not None
                else Path(tempfile.gettempdir()) / "gpufair-artifacts"
            )
        self._artifact_dir = artifact_dir
        self._state = PlanState(state_dir, api_url=api_url, node=node) if state_dir else None
        self._profiles = profiles or {}
        # A plan applied or refused whose profiles and footprints (bytes by (model id,
        # device)) are not yet uploaded.
        self._profiles_due: tuple[NodePlan, dict[tuple[str, str], int]] | None = None
        self._metrics = metrics
        self._credentials = credentials
        self._advertise_url = advertise_url
        self.credentials_etag: str | None = None  # of the last credential document received
        self._credentials_lock = threading.Lock()
        self._serving: NodePlan | None = None  # the plan applied last
        self._node = node
        self._long_poll_s = long_poll_s
        self._heartbeat_s = heartbeat_s
        self._client = httpx.Client(
            base_url=api_url.rstrip("/"),
            headers={"Authorization": f"Bearer {token}"},
            timeout=REQUEST_TIMEOUT_S,
            transport=transport,
        )
        self.etag: str | None = None  # of the last plan document received (applied or not)
        self._refusal: str | None = None  # why the last plan answer was refused, till one serves
        # The newest plan from the API not applied for a reason of its own (it does not parse,
        # names another node, is not newer than the one served, an artifact of it cannot be
        # fetched), reported in the heartbeat's "refused" until a plan applies, so that the API
        # shows why the node does not serve what it was given (the memory refusals are the
        # runtime's, NodeRuntime.refused).
        self._unapplied: RefusedPlan | None = None
        self.heartbeats_sent = 0
        # Set once the API rejected the token TOKEN_REJECTED_TRIES times with no plan served.
        self.token_rejected = threading.Event()
        self._stop = threading.Event()
        # Threads now waiting on an API reply, and what stop() waits on to see them change.
        self._awaiting_api: set[threading.Thread] = set()
        self._threads_changed = threading.Condition()
        loops = [(self._plan_loop, "plan-poll"), (self._heartbeat_loop, "heartbeat")]
        if credentials is not None:
            loops.append((self._credentials_loop, "credentials"))
        self._threads = [
            threading.Thread(target=self._run, args=(loop,), name=name, daemon=True)
            for loop, name in loops
        ]

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        """Stop the threads and close the connections, promptly.

        A thread waiting on an API reply (a long-poll waits up to its ``long_poll_s``) holds
        nothing, and a reply that comes after this is dropped unread (:class:`StoppedError`),
        so it is not waited for: a daemon thread, it ends with the process. A thread busy
        otherwise (applying a plan, saving it) is given up to ``STOP_WAIT_S`` to finish, so
        the runtime is not closed under it."""
        self._stop.set()

        def settled() -> bool:
            return all(not t.is_alive() or t in self._awaiting_api for t in self._threads)

        with self._threads_changed:
            if not self._threads_changed.wait_for(settled, timeout=STOP_WAIT_S):
                busy = [t.name for t in self._threads if t.is_alive()]
                log.warning("stopping with thread(s) %s still busy", ", ".join(busy))
        self._client.close()

    def _run(self, loop: Callable[[], None]) -> None:
        """Run one thread's loop; tell stop() when it ends."""
        try:
            loop()
        finally:
            with self._threads_changed:
                self._threads_changed.notify_all()

    @contextlib.contextmanager
    def _waiting_on_api(self) -> Iterator[None]:
        """Mark this thread as waiting on the API for stop(); StoppedError when the reply (or
        failure) comes after stop(), so that nothing acts on it."""
        me = threading.current_thread()
        with self._threads_changed:
            self._awaiting_api.add(me)
            self._threads_changed.notify_all()
        try:
            yield
        except Exception as exc:
            if self._stop.is_set():
                raise StoppedError from exc
            raise
        finally:
            with self._threads_changed:
                self._awaiting_api.discard(me)
        if self._stop.is_set():
            raise StoppedError

    def _request(
        self,
        method: str,
        path: str,
        *,
        long_poll_s: float = 0.0,
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
        body: object = None,
    ) -> httpx.Response:
        """One API request (``body`` sent as JSON); every request has a timeout, a long-poll's
        read ``long_poll_s`` and a grace."""
        timeout = httpx.Timeout(REQUEST_TIMEOUT_S)
        if long_poll_s > 0:
            timeout = httpx.Timeout(REQUEST_TIMEOUT_S, read=long_poll_s + LONG_POLL_GRACE_S)
        with self._waiting_on_api():
            return self._client.request(
                method, path, headers=headers, params=params, json=body, timeout=timeout
            )

    def resume(self) -> bool:
        """Serve the plan saved by the last run, and check queries against its saved
        credentials, before the API is asked; True if a plan was resumed."""
        if self._state is None:
            return False
        if self._credentials is not None:
            credentials = self._state.load_credentials()
            if credentials is not None:
                self._credentials.update(credentials[0])
                self.credentials_etag = credentials[1]
        saved = self._state.load()
        if saved is None:
            return False
        plan, etag = saved
        if not self._apply(plan):
            return False
        self.etag = etag
        log.info("resumed plan version %d saved in %s", plan.version, self._state.path)
        return True

    def poll_once(self, wait_s: float = 0.0) -> bool:
        """One plan request; True when a new plan was applied. Raises httpx errors."""
        headers = {"If-None-Match": self.etag} if self.etag else {}
        params = {"wait": f"{wait_s:g}"} if wait_s > 0 else {}
        response = self._request(
            "GET", f"/v1/nodes/{self._node}/plan", long_poll_s=wait_s, headers=headers,
            params=params,
        )  # fmt: skip
        if response.status_code == 304:
            return False
        response.raise_for_status()
        etag = response.headers.get("ETag")
        document: object = None  # what came, for its version when it is no plan
        try:
            document = response.json()
            plan = NodePlan.from_dict(document)
        except (PlanError, ValueError) as exc:
            self._refuse(
                f"plan from {response.url} refused, keeping the current one: {exc}",
                _version_of(document),
            )
            self.etag = etag
            return False
        if plan.node != self._node:
            self._refuse(
                f"plan for node {plan.node!r} refused: this is node {self._node!r}", plan.version
            )
            self.etag = etag
            return False
        current = self._runtime.plan_version
        if current is not None and plan.version <= current:
            self._refuse(
                f"plan version {plan.version} from the API ignored: version {current} is served "
                "here (was the API's database recreated? then remove "
                f"{self._state.path if self._state else 'nothing'})",
                plan.version,
                logging.WARNING,
            )
            self.etag = etag
            return False
        try:
            resolved = self._fetch_artifacts(plan)
        except httpx.HTTPError as exc:  # the ETag is left as it was: the plan is pulled again
            why = f"an artifact of it could not be fetched: {_failure(exc)}"
            self._unapplied = RefusedPlan(version=plan.version, reason=why[:MAX_REASON_CHARS])
            raise
        self.etag = etag
        self._cover_credentials(resolved)
        if not self._apply(resolved):
            return False
        self._refusal = self._unapplied = None
        if self._state is not None:
            try:
                self._state.save(resolved, etag)
            except OSError as exc:  # serving matters more than surviving the next restart
                log.error("plan version %d not saved to %s: %s", plan.version,
                          self._state.path, exc)
        return True

    def _refuse(self, why: str, version: int | None, level: int = logging.ERROR) -> None:
        """Log why an answer is refused: once, while the API keeps answering the same (an
        answer without ETag is fetched again after each backoff); and report it in the
        heartbeat when the answer names its plan version."""
        log.log(logging.DEBUG if why == self._refusal else level, "%s", why)
        self._refusal = why
        if version is not None:
            self._unapplied = RefusedPlan(version=version, reason=why[:MAX_REASON_CHARS])

    def poll_credentials(self, wait_s: float = 0.0) -> bool:
        """One credential request; True when a new document was handed to the engine. Raises
        httpx errors, and ValueError for a document that does not parse (its ETag is kept, so
        the same document is not fetched again)."""
        if self._credentials is None:
            return False
        headers = {"If-None-Match": self.credentials_etag} if self.credentials_etag else {}
        params = {"wait": f"{wait_s:g}"} if wait_s > 0 else {}
        response = self._request(
            "GET", f"/v1/nodes/{self._node}/credentials", long_poll_s=wait_s, headers=headers,
            params=params,
        )  # fmt: skip
        if response.status_code == 304:
            return False
        response.raise_for_status()
        with self._credentials_lock:  # the plan thread may fetch too: keep ETag and table paired
            self.credentials_etag = response.headers.get("ETag")
            document = CredentialDocument.model_validate_json(response.content)
            if document.node != self._node:
                raise ValueError(f"credentials of node {document.node!r}, this is {self._node!r}")
            self._credentials.update(document)
        log.info("credentials: %d key(s) of %d tenant(s)",
                 sum(map(len, document.tenants.values())), len(document.tenants))  # fmt: skip
        if self._state is not None:
            try:
                self._state.save_credentials(document, self.credentials_etag)
            except OSError as exc:
                log.error("credentials not saved to %s: %s", self._state.credentials_path, exc)
        return True

    def _cover_credentials(self, plan: NodePlan) -> None:
        """Fetch the credential document now if it lacks a tenant ``plan`` seats.

        The API lists a tenant's keys as soon as a stored plan seats it, but the credential
        long-poll may learn of it up to a recheck later; a plan applied before that would
        refuse the new tenant's first queries with 403. A failed fetch is logged and the plan
        applied anyway: the long-poll thread keeps trying."""
        if self._credentials is None:
            return
        document = self._credentials.document
        known = set(document.tenants) if document is not None else set()
        if {tenant for tenant, _ in _seated(plan)} <= known:
            return
        try:
            self.poll_credentials()
        except (httpx.HTTPError, ValueError) as exc:
            log.warning("credentials for plan version %d not fetched before it is applied "
                        "(%s); the long-poll brings them", plan.version, exc)  # fmt: skip

    def _apply(self, plan: NodePlan) -> bool:
        """Apply a plan; True when it serves now. The SLA tallies are narrowed first to its
        pairs and the replaced plan's, so no query of the new plan goes untallied. A refused
        plan's predicted footprints become due for upload (the runtime keeps the refusal for
        the heartbeat)."""
        if self._metrics is not None:
            self._metrics.retain(_seated(plan) | _seated(self._serving))
        try:
            applied = self._runtime.apply(plan) is not None
        except PlanRefused:
            self._profiles_due = (plan, self._runtime.predicted_footprints(plan))
            return False
        if applied:
            self._serving = plan
            self._profiles_due = (plan, self._runtime.footprints())
        return applied

    def upload_profiles(self) -> int:
        """Upload the footprints of the last applied (or refused) plan's replicas and the
        curves covering its models; the entries sent.

        Raises httpx errors for a failed transport or a 5xx (the upload stays due); a refusal
        (4xx) is logged and dropped, since sending the same body again cannot help.
        """
        if self._profiles_due is None:
            return 0
        plan, footprints = self._profiles_due
        entries = plan_profiles(self._profiles, plan) if self._profiles else []
        sizes = plan_footprints(footprints)
        if entries or sizes:
            response = self._request(
                "PUT",
                f"/v1/nodes/{self._node}/profiles",
                body=ProfilesPut(profiles=entries, footprints=sizes).model_dump(mode="json"),
            )
            if 400 <= response.status_code < 500:
                log.error("profiles for plan version %d refused by the API (HTTP %d): %s",
                          plan.version, response.status_code, response.text[:500])
                entries, sizes = [], []
            else:
                response.raise_for_status()
                log.info("uploaded %d profile(s) and %d footprint(s) for plan version %d",
                         len(entries), len(sizes), plan.version)  # fmt: skip
        self._profiles_due = None
        return len(entries) + len(sizes)

    def _fetch_artifacts(self, plan: NodePlan) -> NodePlan:
        """The plan with every ``api:`` artifact downloaded and replaced by ``file:<path>``."""
        devices = []
        for device in plan.devices:
            seats = []
            for seat in device.seats:
                replica = seat.replica
                if replica is not None and replica.artifact.startswith("api:"):
                    path = self._download(replica.artifact.removeprefix("api:"))
                    replica = dataclasses.replace(replica, artifact=f"file:{path}")
                    seat = dataclasses.replace(seat, replica=replica)
                seats.append(seat)
            devices.append(dataclasses.replace(device, seats=tuple(seats)))
        return dataclasses.replace(plan, devices=tuple(devices))

    def _download(self, model_id: str) -> Path:
        response = self._request("GET", f"/v1/nodes/{self._node}/artifacts/{model_id}")
        response.raise_for_status()
        digest = hashlib.sha256(response.content).hexdigest()
        path = self._artifact_dir / f"{model_id}-{digest[:16]}.pt"
        if not path.exists():
            self._artifact_dir.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(".part")
            partial.write_bytes(response.content)
            partial.replace(path)  # never a half-written file under the final name
        return path

    def heartbeat(self) -> None:
        """Post one heartbeat. Raises httpx errors, and pydantic's ValidationError for a
        report the heartbeat contract refuses (which is then not sent)."""
        body = self.report().model_dump(mode="json")
        response = self._request("POST", f"/v1/nodes/{self._node}/heartbeat", body=body)
        if response.status_code == 403 and self._metrics is not None:
            # Counts for pairs the API no longer counts as this node's (the plan they came
            # from is not recent any more): keep only the served plan's.
            log.warning("heartbeat refused (%s); SLA tallies narrowed to plan version %s",
                        response.text[:500], self._runtime.plan_version)
            self._metrics.retain(_seated(self._serving))
        response.raise_for_status()
        self.heartbeats_sent += 1

    def report(self) -> Heartbeat:
        """The heartbeat of this moment: the plan served, every replica's counters, the models
        that failed to load (each reason clipped to the contract's bound) and the SLA tallies."""
        deployment = self._runtime.deployment
        replicas = []
        if deployment is not None:
            for device in deployment.devices:
                for g in device.groups:
                    replicas.append(
                        ReplicaReport(
                            device=device.plan.device,
                            seat=g.seat.seat,
                            model_id=g.model_id,
                            tenant=g.tenant,
                            in_flight=g.in_flight,
                            completed=g.stats.completed,
                            rejected=g.stats.rejected,
                            expired=g.stats.expired,
                            busy_s=g.stats.busy_own_s + g.stats.busy_pool_s,
                            memory_mb=g.model.footprint_bytes / 2**20,
                        )
                    )
        broken = deployment.broken if deployment is not None else {}
        refusal = self._runtime.refused
        refused = [self._unapplied] if self._unapplied is not None else []
        if refusal is not None:
            refused.append(
                RefusedPlan(version=refusal.version, reason=refusal.reason[:MAX_REASON_CHARS])
            )
        return Heartbeat(
            plan_version=self._runtime.plan_version,
            url=self._advertise_url,
            replicas=replicas,
            broken={model: why[:MAX_REASON_CHARS] for model, why in broken.items()},
            refused=max(refused, key=lambda plan: plan.version, default=None),
            sla=self._metrics.sla_tallies() if self._metrics is not None else [],
            served=self._metrics.served_windows() if self._metrics is not None else [],
        )

    def _serving_now(self) -> str:
        version = self._runtime.plan_version
        return "no plan to serve" if version is None else f"serving plan version {version}"

    def _plan_loop(self) -> None:
        link = ApiLink("plan pulls", log)
        rejections = 0
        while not self._stop.is_set():
            try:
                self._upload_due_profiles()
                self.poll_once(self._long_poll_s)
            except StoppedError:
                return
            except Exception as exc:  # whatever fails, the thread lives on
                delay = backoff_s(link.failures + 1, self._rng)
                status = exc.response.status_code if isinstance(exc, httpx.HTTPStatusError) \
                    else None
                if status in REJECTED:
                    rejections += 1
                    if _token_refused(exc) and self._runtime.plan_version is not None:
                        delay = TOKEN_REFUSED_RETRY_S
                    log.error("token rejected by the API (HTTP %d) for node %r: check --token "
                              "or GPUFAIR_EXECUTOR_TOKEN; %s; try %d", status, self._node,
                              self._serving_now(), rejections)  # fmt: skip
                    link.failed(f"HTTP {status}", f"retry in {delay:.1f}s", announced=True)
                    if self._runtime.plan_version is None and rejections >= TOKEN_REJECTED_TRIES:
                        self.token_rejected.set()
                        return
                else:
                    link.failed(
                        _failure(exc),
                        f"{self._serving_now()}; retry in {delay:.1f}s, then backing off up "
                        f"to {MAX_BACKOFF_S:g}s",
                        error=None if isinstance(exc, httpx.HTTPError) else exc,
                    )
                self._stop.wait(delay)
                continue
            rejections = 0
            if self.etag is None:
                # No ETag to long-poll with: the next pull would be answered at once, and
                # again, so it waits as after a failure.
                delay = backoff_s(link.failures + 1, self._rng)
                link.failed(
                    "the API's answer carries no ETag to long-poll with",
                    f"{self._serving_now()}; next pull in {delay:.1f}s",
                )
                self._stop.wait(delay)
                continue
            link.succeeded()

    def _credentials_loop(self) -> None:
        link = ApiLink("credential pulls", log)
        while not self._stop.is_set():
            try:
                self.poll_credentials(min(self._long_poll_s, CREDENTIALS_WAIT_S))
            except StoppedError:
                return
            except Exception as exc:  # whatever fails, the thread lives on
                delay = backoff_s(link.failures + 1, self._rng)
                if _token_refused(exc):
                    delay = TOKEN_REFUSED_RETRY_S
                link.failed(
                    _failure(exc),
                    f"queries are checked against the last keys received; retry in "
                    f"{delay:.1f}s, then backing off up to {MAX_BACKOFF_S:g}s",
                    error=None if isinstance(exc, (httpx.HTTPError, ValueError)) else exc,
                )
                self._stop.wait(delay)
            else:
                link.succeeded()

    def _upload_due_profiles(self) -> None:
        """Upload due profiles; a failure is logged and retried after the next plan pull, so an
        API that cannot store profiles never holds plans back. An upload that fails otherwise
        (a body the contract refuses) is dropped: the same body would fail again."""
        if self._profiles_due is None:
            return
        try:
            self.upload_profiles()
        except httpx.HTTPError as exc:
            log.warning("profile upload failed (%s); retried after the next plan pull", exc)
        except (StoppedError, KeyboardInterrupt):
            raise
        except Exception:
            log.exception("profile upload dropped")
            self._profiles_due = None

    def _heartbeat_loop(self) -> None:
        link = ApiLink("heartbeats", log)
        wait = self._heartbeat_s
        while not self._stop.wait(wait):
            wait = self._heartbeat_s
            try:
                self.heartbeat()
            except StoppedError:
                return
            except ValidationError as exc:
                log.error(
                    "heartbeat not sent: the heartbeat contract refuses it: %s",
                    first_error(exc, "heartbeat"),
                )
            except Exception as exc:  # whatever fails, the thread lives on
                if _token_refused(exc):
                    wait = max(wait, TOKEN_REFUSED_RETRY_S)
                link.failed(
                    _failure(exc),
                    f"the node serves on and sends the next in {wait:g}s",
                    error=None if isinstance(exc, httpx.HTTPError) else exc,
                )
            else:
                link.succeeded()
