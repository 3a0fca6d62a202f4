"""`gpufair bench api`: flags that make no sense are refused as the command starts, one line
naming the flag, status 2 — not a run that divides by a zero duration or opens no client."""

from __future__ import annotations

import pytest

from bench import api as bench_api


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--rate", "0"], "--rate"),
        (["--duration", "nan"], "--duration"),
        (["--duration", "-5"], "--duration"),
        (["--nodes", "0"], "--nodes"),
        (["--clients", "0"], "--clients"),
        (["--pollers", "-1"], "--pollers"),
        (["--mixed-rate", "inf"], "--mixed-rate"),
        (["--workers", "0"], "--workers"),
    ],
)
def test_a_flag_out_of_range_is_refused_before_anything_starts(
    flags: list[str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        bench_api._parser().parse_args(flags)
    assert exit_.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("gpufair bench api: error: argument " + named), last
