"""The lock files under requirements/ agree with pyproject.toml and with what is installed.

pyproject.toml keeps compatible ranges for people who install gpufair as a library; every
install path of the project itself (the Makefile, CI, the Dockerfile) installs the exact,
hashed versions of requirements/lock.txt plus one torch lock. So a dependency moves by a diff
of the lock, and these tests fail when the two files drift apart: a requirement added to
pyproject.toml without `make lock`, a lock edited by hand past a range, a lock entry without a
hash, or an environment that was not built from the lock.
"""

from __future__ import annotations

import importlib.metadata
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
REQUIREMENTS = ROOT / "requirements"
PYPROJECT_VIA = "gpufair (pyproject.toml)"
ENTRY = re.compile(r"^(?P<name>[A-Za-z0-9._-]+)==(?P<version>\S+)")


@dataclass(frozen=True)
class Locked:
    version: Version
    hashes: tuple[str, ...]
    via: tuple[str, ...]  # what asked for it, as the lock's "# via" comments say


def read_lock(path: Path) -> dict[str, Locked]:
    """name -> locked entry, from a lock written by `uv pip compile --generate-hashes`."""
    entries: dict[str, Locked] = {}
    name = version = None
    hashes: list[str] = []
    via: list[str] = []

    def close() -> None:
        if name is not None and version is not None:
            entries[canonicalize_name(name)] = Locked(Version(version), tuple(hashes), tuple(via))

    for raw in path.read_text().splitlines():
        line = raw.strip().rstrip("\\").strip()
        match = ENTRY.match(raw)
        if match:
            close()
            name, version, hashes, via = match["name"], match["version"], [], []
        elif line.startswith("--hash="):
            hashes.append(line.removeprefix("--hash="))
        elif line.startswith("# via") or (line.startswith("#   ") and name is not None):
            text = line.removeprefix("# via").removeprefix("#").strip()
            if text:
                via.append(text)
        elif line.startswith("# The following packages were excluded"):
            close()
            name = None
    close()
    return entries


def direct_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = project["dependencies"] + project["optional-dependencies"]["dev"]
    return [Requirement(line) for line in lines]


def build_requirements() -> list[Requirement]:
    lines = (REQUIREMENTS / "build.in").read_text().splitlines()
    return [Requirement(line) for line in lines if line and not line.startswith("#")]


LOCK = read_lock(REQUIREMENTS / "lock.txt")
TORCH_LOCKS = {kind: read_lock(REQUIREMENTS / f"torch-{kind}.txt") for kind in ("cpu", "cuda")}


def test_every_requirement_of_pyproject_is_locked_within_its_range() -> None:
    for requirement in direct_requirements() + build_requirements():
        name = canonicalize_name(requirement.name)
        locks = [LOCK] if name != "torch" else list(TORCH_LOCKS.values())
        for lock in locks:
            assert name in lock, f"{name} is in pyproject.toml but not locked: run `make lock`"
            version = lock[name].version
            assert requirement.specifier.contains(version, prereleases=True), (
                f"{name}: locked {version} is outside pyproject.toml's {requirement.specifier}")


def test_the_lock_holds_no_direct_requirement_that_pyproject_dropped() -> None:
    direct = {canonicalize_name(r.name) for r in direct_requirements()}
    claimed = {name for name, entry in LOCK.items() if PYPROJECT_VIA in entry.via}
    assert claimed == direct - {"torch"}


def test_every_locked_package_is_pinned_with_a_hash() -> None:
    for lock in (LOCK, *TORCH_LOCKS.values()):
        assert lock
        for name, entry in lock.items():
            assert entry.hashes and all(h.startswith("sha256:") for h in entry.hashes), name


def test_torch_is_locked_apart_the_cpu_build_by_default() -> None:
    assert "torch" not in LOCK
    cpu, cuda = TORCH_LOCKS["cpu"]["torch"].version, TORCH_LOCKS["cuda"]["torch"].version
    assert cpu.local == "cpu" and cuda.local is None and cpu.public == cuda.public
    assert set(TORCH_LOCKS["cpu"]) == {"torch"}  # its pure-Python dependencies are in LOCK
    # The torch locks add only what the main lock lacks, so the two never disagree.
    for lock in TORCH_LOCKS.values():
        assert not (set(lock) - {"torch"}) & set(LOCK)


def test_this_environment_was_installed_from_the_lock() -> None:
    installed_torch = Version(importlib.metadata.version("torch"))
    torch_kind = "cpu" if installed_torch.local == "cpu" else "cuda"
    expected = {**LOCK, **TORCH_LOCKS[torch_kind]}
    drifted = {}
    for name, entry in expected.items():
        try:
            version = Version(importlib.metadata.version(name))
        except importlib.metadata.PackageNotFoundError:
            drifted[name] = "not installed"
            continue
        if version != entry.version:
            drifted[name] = f"{version} installed, {entry.version} locked"
    if drifted:
        pytest.fail(f"not the locked versions (run `make clean test`): {drifted}")


@pytest.mark.parametrize("path", ["Makefile", "deploy/Dockerfile"])
def test_every_install_path_installs_the_locked_versions(path: str) -> None:
    text = (ROOT / path).read_text().replace("\\\n", " ")
    installs = [
        part.split("pip install", 1)[1].split()
        for line in text.splitlines() if not line.lstrip().startswith("#")
        for part in line.split("&&") if "pip install" in part
    ]
    assert installs
    locks = set()
    for words in installs:
        assert "--no-deps" in words, f"{path}: {' '.join(words)} resolves dependencies itself"
        if "-r" in words:
            assert "--require-hashes" in words, f"{path}: {' '.join(words)} checks no hash"
            locks.add(words[words.index("-r") + 1].replace("$(LOCK)", "requirements/lock.txt"))
        else:
            assert words[-1] == ".", f"{path}: {' '.join(words)} installs more than gpufair"
    assert "requirements/lock.txt" in locks
    assert any("torch" in lock.lower() for lock in locks)
