"""`gpufair bench gateway`'s flags: refused at the door when they make no sense, and what
--quick shortens, without starting anything."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bench import gateway


@pytest.fixture(autouse=True)
def nothing_starts(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A test that got past the flags would start the load client first: fail instead, and
    write nowhere near bench/results."""

    def started(*args: object, **kwargs: object) -> None:
        raise AssertionError("the benchmark started")

    monkeypatch.setattr(gateway, "LoadClient", started)
    monkeypatch.setattr(gateway, "RESULTS_DIR", tmp_path)


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--trial-s", "0"], "--trial-s"),
        (["--repeats", "0"], "--repeats"),
        (["--rate", "-5"], "--rate"),
        (["--sla-ms", "nan"], "--sla-ms"),
        (["--isolation-s", "-1"], "--isolation-s"),
        (["--failover-s", "inf"], "--failover-s"),
        (["--bisections", "-1"], "--bisections"),
        (["--row-us", "-1"], "--row-us"),
        (["--batch-us", "nan"], "--batch-us"),
        # The kill must come while queries still arrive, or nothing is failed over.
        (["--failover-s", "10", "--kill-at-s", "12"], "--kill-at-s"),
    ],
)
def test_a_flag_out_of_range_is_one_line_and_status_2(
    flags: list[str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stopped:
        gateway.main(flags)
    assert stopped.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("gpufair bench gateway: error:") and named in last


def test_quick_shortens_only_what_the_command_line_did_not_set() -> None:
    quick, _ = gateway._config(["--quick"])
    assert (quick.trial_s, quick.repeats, quick.bisections, quick.isolation_s) == (4.0, 1, 1, 8.0)
    # The command recorded with the results says --repeats 3: so does the run.
    chosen, _ = gateway._config(["--quick", "--repeats", "3", "--isolation-s", "12"])
    assert (chosen.trial_s, chosen.repeats, chosen.isolation_s) == (4.0, 3, 12.0)
    assert chosen.command == "gpufair bench gateway --quick --repeats 3 --isolation-s 12"
    full, _ = gateway._config([])
    assert (full.trial_s, full.repeats, full.bisections, full.isolation_s) == (5.0, 3, 3, 20.0)


def _trial(rate: float, queries: int) -> dict[str, Any]:
    return {"rate": rate, "queries": queries, "answered": queries, "refused": 0, "failed": 0,
            "p50_ms": 10.0, "p99_ms": 150.0, "attainment": 1.0, "ok": False, "client_cpu": 0.02}


def test_a_run_with_no_share_to_flood_says_isolation_was_not_run() -> None:
    """When the direct path held the SLA at no rate searched (throughput 0, as on a busy
    machine), there is no share: the results say isolation was not run, and state no
    attainment for a calm tenant that sent nothing."""
    data: dict[str, Any] = {
        "command": "gpufair bench gateway --quick", "machine_text": "Machine: a VM.",
        "load_average": [5.7, 6.3, 4.6], "load_average_end": [4.8, 5.0, 4.6],
        "cost": {"rate_qps": 100.0, "fixed_load": {"direct": [_trial(100.0, 400)],
                                                   "gateway": [_trial(100.0, 400)]},
                 "p50_ms": {"direct": 10.4, "gateway": 16.6}, "added_p50_ms": 6.2,
                 "throughput_qps": {"direct": [0.0], "gateway": [0.0]},
                 "throughput_median_qps": {"direct": 0.0, "gateway": 0.0},
                 "throughput_ratio": None},
        "isolation": None,
        "failover": {"rate_qps": 100.0, "queries": 1000, "answered": 1000, "statuses": {200: 1000},
                     "kill_at_s": 4.1, "seen_dead_after_kill_s": 0.2, "after_seen": 570,
                     "answered_after_seen": 570, "answered_after_seen_fraction": 1.0},
    }  # fmt: skip
    text = gateway.markdown(data)
    assert "## Isolation through the gateway\n\nNot run:" in text
    assert "Calm tenant" not in text and "0.00%" not in text
    assert "## Failover" in text  # the rest of the results are still stated
