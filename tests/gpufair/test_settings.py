"""The settings tree: file, environment overrides, and one-line errors for bad values."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gpufair.settings import SettingsError, load_settings


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[api]\nport = 9000\n[allocator]\ntime_limit_s = 3.0\n')
    settings = load_settings(config, {"GPUFAIR_API_PORT": "9100"})
    assert settings.api.port == 9100
    assert settings.allocator.time_limit_s == 3.0
    assert settings.database.url.startswith("sqlite:///")


def test_node_token_variable_is_not_taken_for_a_setting(tmp_path: Path) -> None:
    settings = load_settings(_empty(tmp_path),
                             {"GPUFAIR_EXECUTOR_TOKEN": "secret", "GPUFAIR_CONFIG": "x"})
    assert settings.executor.port == 9090


@pytest.mark.parametrize(
    ("environ", "fragment"),
    [
        ({"GPUFAIR_API_PORT": "70000"}, "api.port"),
        ({"GPUFAIR_ALLOCATOR_SOLVER": "gurobi"}, "allocator.solver"),
        ({"GPUFAIR_EXECUTOR_NO_SUCH_KEY": "1"}, "executor.no_such_key"),
    ],
)
def test_a_bad_value_is_named_in_one_line(
    tmp_path: Path, environ: dict[str, str], fragment: str
) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(_empty(tmp_path), environ)
    message = str(caught.value)
    assert fragment in message
    assert "\n" not in message


def test_an_unknown_key_in_the_file_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text("[executor]\nno_such_key = 1\n")
    with pytest.raises(SettingsError, match="executor.no_such_key"):
        load_settings(config, {})


def test_building_settings_reads_no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only load_settings reads GPUFAIR_* variables: a test's Settings() is the defaults."""
    from gpufair.settings import Settings

    monkeypatch.setenv("GPUFAIR_API_PORT", "9100")
    assert Settings().api.port == 8080


def test_a_named_config_file_must_exist(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="does not exist"):
        load_settings(None, {"GPUFAIR_CONFIG": str(tmp_path / "missing.toml")})


def test_a_config_file_that_is_a_directory_is_refused_not_skipped(tmp_path: Path) -> None:
    """The TOML source skips what is not a file: every setting would be its default."""
    with pytest.raises(SettingsError, match=f"config file {tmp_path} is a directory"):
        load_settings(None, {"GPUFAIR_CONFIG": str(tmp_path)})
    with pytest.raises(SettingsError, match="is a directory"):
        load_settings(tmp_path, {})


def test_a_config_file_that_is_not_utf8_text_is_refused_in_one_line(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_bytes(b"[api]\nport = 9000 # \xff\n")
    with pytest.raises(SettingsError) as caught:
        load_settings(config, {})
    assert str(caught.value) == f"{config}: not UTF-8 text (byte 0xff at offset 20)"


def _empty(tmp_path: Path) -> Path:
    path = tmp_path / "empty.toml"
    path.write_text("")
    return path


def test_config_toml_holds_every_setting_at_its_default() -> None:
    """The README promises that config.toml shows every setting with its default."""
    import tomllib

    from gpufair.settings import Settings

    path = Path(__file__).resolve().parents[2] / "config.toml"
    text = path.read_text()
    document = tomllib.loads(text)
    defaults = Settings()
    assert set(document) == set(Settings.model_fields)
    for section_name, section in defaults:
        written = document[section_name]
        for key, default in section:
            if default is None:  # TOML has no null: an unset default is shown commented out
                assert key not in written
                assert re.search(rf"^# {key} = ", text, re.MULTILINE), f"{section_name}.{key}"
            else:
                assert written.get(key) == default, f"{section_name}.{key}"
        assert set(written) <= set(type(section).model_fields)
    assert load_settings(path, {}) == defaults


def test_the_parts_defaults_are_the_settings_defaults() -> None:
    """SolveOptions and SchedulerConfig can be built without settings (tests, library users);
    their defaults must then be the ones a deployment gets from the settings."""
    from allocator.options import SolveOptions
    from executor.scheduling import SchedulerConfig
    from gpufair.compose import scheduler_config, solve_options
    from gpufair.settings import Settings

    settings = Settings()
    assert SolveOptions() == solve_options(settings.allocator)
    assert SchedulerConfig() == scheduler_config(settings.executor)


def test_operations_md_lists_every_setting() -> None:
    """docs/operations.md's table is where an operator looks a variable up: every setting of
    the tree has its row."""
    from gpufair.settings import ENV_PREFIX, Settings

    text = (Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text()
    rows = set(re.findall(r"^\| `(GPUFAIR_[A-Z0-9_]+)` \|", text, re.MULTILINE))
    every = {
        f"{ENV_PREFIX}{name}_{key}".upper() for name, section in Settings() for key, _ in section
    }
    assert every - rows == set(), "settings missing from docs/operations.md"
    assert rows - every == set(), "rows of docs/operations.md that are no setting"
