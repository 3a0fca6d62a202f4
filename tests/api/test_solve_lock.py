"""A solve killed mid-way (``kill -9``) does not hold up the next one.

A real process takes the solve lock the way ``POST /v1/allocations`` does (``run_solve``) and
is killed while its solver runs; the next solve, from this process, must get the lock and store
its allocation well within its own wait. On SQLite the dead holder's lease expires (it is short
and was kept alive only by the holder's renewals); on PostgreSQL the server drops the advisory
lock with the dead holder's connection.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from allocator import NodePlan, SolveOptions
from api.app import pool_limits
from api.db import Database
from api.services.allocations import plans_of_allocation, run_solve
from api.services.plans import ParsedPlans
from gpufair.compose import api_config, solve_options
from gpufair.settings import AllocatorSettings
from tests.api.conftest import Api, make_settings

ROOT = Path(__file__).resolve().parents[2]
# Takes the lock through run_solve, says so, and then "solves" for an hour.
HOLDER = """
import sys, time
import allocator
from api.db import Database, PoolLimits
from api.services.allocations import run_solve
from api.services.plans import ParsedPlans
from gpufair.compose import solve_options
from gpufair.settings import AllocatorSettings

def solving_for_an_hour(*args, **kwargs):
    print("solving", flush=True)
    time.sleep(3600)

allocator.allocate_cluster = solving_for_an_hour
run_solve(
    db=Database(sys.argv[1], pool=PoolLimits(size=2, wait_timeout_s=5.0)),
    options=solve_options(AllocatorSettings()),
    objective="utilitarian",
    parsed=ParsedPlans(),
)
"""


def test_a_solve_killed_mid_way_leaves_no_lock_behind(api: Api, db_url: str) -> None:
    _, key = api.tenant("ads")
    api.model(key, "ranker", replicas_wanted=1)
    api.node("n1", gpus=1)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, db_url],
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "solving"
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    config = api_config(make_settings(db_url))
    db = Database(db_url, pool=pool_limits(config))
    # Its own wait (2 x 0.5 + 60 s) is shorter than a lease that would last the killed
    # holder's whole solve budget (2 x 8 + 60 s): only a takeover lets this solve run.
    options: SolveOptions = solve_options(AllocatorSettings(time_limit_s=0.5))
    try:
        row = run_solve(
            db=db, options=options, objective="utilitarian", parsed=ParsedPlans()
        )
    finally:
        db.dispose()
    assert row.version == 1


def test_a_solve_keeps_its_committed_plans_parsed_as_a_reader_would_parse_them(
    api: Api, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tenants' reads after a solve find its plans parsed already (rather than each of
    the first readers parsing all of them at once), and what was kept is what a parse of the
    stored rows gives."""
    _, key = api.tenant("ads")
    api.model(key, "ranker", replicas_wanted=2)
    api.node("n1", gpus=2)
    api.node("n2", gpus=1)
    config = api_config(make_settings(db_url))
    db = Database(db_url, pool=pool_limits(config))
    parsed = ParsedPlans()
    options: SolveOptions = solve_options(AllocatorSettings(time_limit_s=5.0))
    try:
        row = run_solve(db=db, options=options, objective="utilitarian", parsed=parsed)
        with db.session(write=False) as session:
            fresh = plans_of_allocation(session=session, allocation_id=row.id)
            # No plan is parsed to answer: every one comes from what the solve kept.
            with monkeypatch.context() as patched:
                patched.setattr(NodePlan, "from_dict", _no_parse)
                kept = parsed.of_allocation(session=session, allocation_id=row.id)
    finally:
        db.dispose()
    assert set(fresh) == {"n1", "n2"} and kept == fresh


def _no_parse(document: object) -> NodePlan:
    raise AssertionError("a plan was parsed where the solve's parse was kept")
