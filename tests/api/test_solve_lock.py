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

from allocator import SolveOptions
from api.app import pool_limits
from api.db import Database
from api.services.allocations import run_solve
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
        row = run_solve(db=db, options=options, objective="utilitarian")
    finally:
        db.dispose()
    assert row.version == 1
