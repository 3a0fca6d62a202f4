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


def test_in_development_mode_the_printed_token_signs_in_to_the_dashboard(tmp_path: Path) -> None:
    # The defaults of config.toml: development mode with the development token.
    with ChildServer("gpufair serve", ["serve", "--no-access-log"], log_path=tmp_path / "log",
                     env=_env(tmp_path), cwd=tmp_path) as serve:
        serve.wait_healthy(60)
        printed = (tmp_path / "log").read_text()
        (address, token) = re.findall(r"dashboard (http://\S+) \(sign in with the token (\S+)\)",
                                      printed)[0]
        assert address == f"{serve.url}/" and token == "dev-admin-token"
        with httpx.Client(base_url=serve.url, timeout=30) as browser:
            assert "Sign in" in browser.get("/").text
            signed_in = browser.post("/sign-in", data={"token": token}, follow_redirects=True)
        assert signed_in.status_code == 200
        assert "Sign in" not in signed_in.text
        assert f"API docs {serve.url}/docs" in printed


def test_a_token_the_operator_set_is_never_printed(tmp_path: Path) -> None:
    secret = "s3cret-admin-token-of-the-operator"
    with ChildServer("gpufair serve", ["serve"], log_path=tmp_path / "log", cwd=tmp_path,
                     env=_env(tmp_path, GPUFAIR_API_ADMIN_TOKEN=secret)) as serve:
        serve.wait_healthy(60)
        printed = (tmp_path / "log").read_text()
        assert secret not in printed
        assert (f"dashboard {serve.url}/ (sign in with the admin token, GPUFAIR_API_ADMIN_TOKEN)"
                in printed)


@pytest.mark.parametrize(
    ("token", "line"),
    [
        ("t0k", "http://h:1/ (sign in with the token t0k)"),
        (None, "http://h:1/ (sign in with the admin token, GPUFAIR_API_ADMIN_TOKEN)"),
    ],
)
def test_the_sign_in_line_never_puts_a_token_in_the_address(token: str | None, line: str) -> None:
    # The form POSTs the token; an address with ?token= would land in access logs.
    assert dashboard_sign_in("http://h:1", token) == line
