"""bench.machine.session_niceness: a benchmark's niceness weighs its session against others."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import machine


@pytest.fixture
def autogroup(tmp_path: Path) -> Path:
    """A stand-in for /proc/self/autogroup: it reads as the kernel's and takes a number."""
    path = tmp_path / "autogroup"
    path.write_text("/autogroup-94 nice 0\n")
    return path


def _nice(path: Path) -> int:
    text = path.read_text()
    return int(text.split("nice")[1]) if "nice" in text else int(text)


def test_a_niceness_below_the_sessions_is_lent_to_it_and_given_back(
    autogroup: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(machine.os, "nice", lambda increment: -10)
    with machine.session_niceness(autogroup) as during:
        assert during == -10
        assert _nice(autogroup) == -10
    assert _nice(autogroup) == 0


def test_a_niceness_not_below_the_sessions_leaves_it(
    autogroup: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(machine.os, "nice", lambda increment: 5)
    with machine.session_niceness(autogroup) as during:
        assert during == 0
    assert autogroup.read_text() == "/autogroup-94 nice 0\n"


def test_without_autogroups_nothing_is_changed(tmp_path: Path) -> None:
    with machine.session_niceness(tmp_path / "absent") as during:
        assert during is None
    assert not (tmp_path / "absent").exists()
