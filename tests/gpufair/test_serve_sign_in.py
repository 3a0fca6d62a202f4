"""``gpufair serve`` says at start where the dashboard is and how to sign in to it."""

from __future__ import annotations

import os
import re
from pathlib import Path

import httpx
import pytest

from gpufair.commands.serve import dashboard_sign_in
from gpufair.servers import ChildServer

ROOT = Path(__file__).resolve().parents[2]


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUFAIR_")}
    env.update(GPUFAIR_DATABASE_URL=f"sqlite:///{tmp_path / 'gpufair.db'}",
               PYTHONPATH=str(ROOT), **extra)
    return env


def test_in_development_mode_the_printed_link_signs_in_to_the_dashboard(tmp_path: Path) -> None:
    # The defaults of config.toml: development mode with the development token.
    with ChildServer("gpufair serve", ["serve", "--no-access-log"], log_path=tmp_path / "log",
                     env=_env(tmp_path), cwd=tmp_path) as serve:
        serve.wait_healthy(60)
        printed = (tmp_path / "log").read_text()
        (link,) = re.findall(r"dashboard (http://\S+)", printed)
        assert link == f"{serve.url}/?token=dev-admin-token"
        page = httpx.get(link, timeout=30)
        assert page.status_code == 200
        assert "Sign in" not in page.text
        assert f"API docs {serve.url}/docs" in printed


def test_a_token_the_operator_set_is_never_printed(tmp_path: Path) -> None:
    secret = "s3cret-admin-token-of-the-operator"
    with ChildServer("gpufair serve", ["serve"], log_path=tmp_path / "log", cwd=tmp_path,
                     env=_env(tmp_path, GPUFAIR_API_ADMIN_TOKEN=secret)) as serve:
        serve.wait_healthy(60)
        printed = (tmp_path / "log").read_text()
        assert secret not in printed
        assert f"dashboard {serve.url}/?token=<GPUFAIR_API_ADMIN_TOKEN>" in printed


@pytest.mark.parametrize(
    ("token", "dev_mode", "line"),
    [
        ("t0k", True, "http://h:1/?token=t0k"),
        (None, True, "http://h:1/?token=<GPUFAIR_API_ADMIN_TOKEN>"),
        ("t0k", False, "http://h:1/ (send the admin token as 'Authorization: Bearer …', e.g. "
                       "from a proxy)"),
    ],
)
def test_the_sign_in_line_matches_what_the_dashboard_accepts(
    token: str | None, dev_mode: bool, line: str
) -> None:
    # Outside development mode the dashboard takes no token in its URL: no link is offered.
    assert dashboard_sign_in("http://h:1", token, dev_mode=dev_mode) == line
