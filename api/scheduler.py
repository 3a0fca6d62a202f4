"""Scheduled re-solve: every ``config.solve_interval_s`` the API solves again on its own.

docs/architecture.md §1's loop re-solves "on request or on a schedule"; this is the schedule. The
task is made by the app factory's lifespan (nothing runs at import) and calls the very service
function ``POST /v1/allocations`` runs (:func:`api.services.allocations.run_solve`), so a
scheduled allocation is solved, certified, stored and announced to long-polling nodes exactly
as a requested one, and the solve lock serialises it with every other solve of every replica.

A tick is skipped when nothing changed: the snapshot the allocator would divide (tenants,
ready models with their profiles or estimates, devices, objective) is read — a handful of
indexed queries, far cheaper than a solve — and compared with the snapshot this process last
solved. No schema column is needed for that. The first tick after start solves whenever there
is something to allocate, since this process cannot know which inputs the newest stored
allocation was made from. Each replica keeps its own memory, so with N replicas one change
leads to at most N solves (one per replica, serialised by the lock).

A failed tick (solver error, lock busy, database down) is logged and retried on the next
period; it never stops the loop or the app. The blocking solve runs in a worker thread; on
shutdown the loop is cancelled and a solve already under way is awaited, so it is never cut
off between its solve and its store.
"""

from __future__ import annotations

import asyncio
import logging

from allocator import ClusterSnapshot
from api.models import AllocationRow
from api.services import allocations as service
from api.state import AppState

log = logging.getLogger(__name__)


class SolveScheduler:
    """Re-solves every ``interval_s`` seconds while started; see the module docstring."""

    def __init__(self, state: AppState, interval_s: float) -> None:
        if interval_s <= 0:
            raise ValueError(f"solve interval must be positive, got {interval_s}")
        self.state = state
        self.interval_s = interval_s
        self._last_solved: ClusterSnapshot | None = None
        self._task: asyncio.Task[None] | None = None
        self._in_flight: asyncio.Future[AllocationRow | None] | None = None

    def tick(self) -> AllocationRow | None:
        """One scheduled step (blocking): solve and announce if the inputs changed."""
        config = self.state.config
        with self.state.db.session(write=False) as session:
            snapshot = service.read_solve_input(
                session=session, objective=config.default_objective
            ).snapshot
        if not snapshot.tenants or not snapshot.gpus:
            log.debug("scheduled solve skipped: no tenant or no node yet")
            return None
        if snapshot == self._last_solved:
            log.debug("scheduled solve skipped: nothing changed since the last one")
            return None
        with self.state.metrics.solve_seconds.time():
            row = service.run_solve(
                db=self.state.db,
                options=config.solve_options,
                objective=config.default_objective,
                parsed=self.state.parsed_plans,
                rendered=self.state.rendered_plans,
            )
        # Remember the snapshot read before the solve: a change that raced the solve makes the
        # next tick differ from it and solve again, never the other way round.
        self._last_solved = snapshot
        self.state.metrics.allocation_version.set(row.version)
        self.state.notifier.notify(allocation_id=row.id)
        log.info("scheduled solve stored allocation %d", row.version)
        return row

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.interval_s)
            self._in_flight = loop.run_in_executor(None, self.tick)
            try:
                # Shielded: cancelling the loop must not abandon a solve between solve and store.
                await asyncio.shield(self._in_flight)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("scheduled solve failed (retrying in %.3g s): %s", self.interval_s, exc)
            self._in_flight = None

    def start(self) -> None:
        """Start the loop on the running event loop (the app's lifespan)."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name="gpufair-solve")
        log.info("re-solving the allocation every %.3g s", self.interval_s)

    async def stop(self) -> None:
        """Cancel the loop and wait for a solve already under way to be stored."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if self._in_flight is not None:
            try:
                await self._in_flight
            except Exception:
                # The loop was cancelled while this solve ran, so _run did not log its failure.
                log.warning("scheduled solve under way at shutdown failed", exc_info=True)
            self._in_flight = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()
