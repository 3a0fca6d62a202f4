"""`gpufair bench serve` (in-process): flags that make no sense are refused before anything
is measured."""

from __future__ import annotations

import pytest

from bench import serve


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--sla-ms", "nan"], "--sla-ms"),  # every trial would read as within the SLA
        (["--sla-ms", "0"], "--sla-ms"),
        (["--cores", "0"], "--cores"),
        (["--user-tables", "-1"], "--user-tables"),
        (["--scale", "nan"], "--scale"),
    ],
)
def test_a_flag_out_of_range_is_refused_before_anything_starts(
    flags: list[str], named: str, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    def started(*args: object) -> None:
        raise AssertionError("the benchmark started")

    monkeypatch.setattr(serve, "this_machine", started)
    try:
        status = serve.main(flags)
    except SystemExit as exc:  # argparse's refusal of a flag
        status = int(exc.code or 0)
    assert status == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("gpufair bench serve") and named in last
