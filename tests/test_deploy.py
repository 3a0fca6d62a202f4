"""The Kubernetes manifests under deploy/ and the operator's guide cannot drift from the code.

Every ``gpufair`` command line a manifest runs is parsed by that command's own argument parser,
every ``GPUFAIR_*`` variable a manifest sets or the docs name must be a real setting of
:mod:`gpufair.settings` (``GPUFAIR_<SECTION>_<KEY>``), literal values must pass the settings'
validation, and each Secret a container reads must be defined with that key.
"""

from __future__ import annotations

import importlib
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from executor.front.remote import ENGINE_ANSWER_S
from gpufair.cli import COMMANDS
from gpufair.settings import NOT_SETTINGS, Settings

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
MANIFESTS = sorted(p for p in DEPLOY.glob("*.yaml") if p.name != "kustomization.yaml")
DOCS = [ROOT / "docs" / "operations.md", DEPLOY / "README.md"]
WORKLOADS = {"Deployment", "DaemonSet", "StatefulSet", "Job"}
ENV_NAME = re.compile(r"\bGPUFAIR_[A-Z0-9_]+\b")


def _documents() -> list[dict[str, Any]]:
    docs = []
    for path in MANIFESTS:
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def _containers() -> list[dict[str, Any]]:
    found = []
    for doc in _documents():
        if doc["kind"] in WORKLOADS:
            pod = doc["spec"]["template"]["spec"]
            found += pod.get("initContainers", []) + pod["containers"]
    return found


def _gpufair_containers() -> list[dict[str, Any]]:
    return [c for c in _containers() if c["image"].startswith("gpufair")]


def _gpufair_argv(container: dict[str, Any]) -> list[str]:
    """The ``gpufair ...`` argument vector the container runs, also from inside ``sh -c``."""
    words = list(container.get("command", [])) + list(container.get("args", []))
    if words[:2] == ["sh", "-c"]:
        words = shlex.split(" ".join(words[2:]))
    assert "gpufair" in words, f"{container['name']}: runs no gpufair command: {words}"
    return words[words.index("gpufair") + 1 :]


def _setting_path(name: str) -> tuple[str, str]:
    """GPUFAIR_<SECTION>_<KEY> -> (section, key), as gpufair.settings reads the environment."""
    section, _, key = name.removeprefix("GPUFAIR_").lower().partition("_")
    return section, key


def _is_setting(name: str) -> bool:
    section, key = _setting_path(name)
    fields = Settings.model_fields
    if section not in fields:
        return False
    model = fields[section].annotation
    return model is not None and key in model.model_fields  # type: ignore[union-attr]


def test_manifests_parse_and_kustomization_lists_them() -> None:
    assert MANIFESTS, "no manifests under deploy/"
    kinds = {d["kind"] for d in _documents()}
    assert {"Deployment", "DaemonSet", "StatefulSet", "Service", "Job", "Secret"} <= kinds
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(p.name for p in MANIFESTS)


@pytest.mark.parametrize("container", _gpufair_containers(), ids=lambda c: c["name"])
def test_container_runs_a_real_gpufair_command(container: dict[str, Any]) -> None:
    argv = _gpufair_argv(container)
    assert argv[0] in COMMANDS, f"{container['name']}: unknown command gpufair {argv[0]}"
    parser = importlib.import_module(f"gpufair.commands.{COMMANDS[argv[0]][0]}")._parser()
    try:
        parser.parse_args(argv[1:])
    except SystemExit:
        pytest.fail(f"{container['name']}: gpufair {' '.join(argv)} does not parse")


@pytest.mark.parametrize("container", _gpufair_containers(), ids=lambda c: c["name"])
def test_container_settings_exist_and_literal_values_validate(container: dict[str, Any]) -> None:
    env = container.get("env", [])
    names = [e["name"] for e in env] + ENV_NAME.findall(" ".join(container.get("args", [])))
    unknown = [n for n in names if n.startswith("GPUFAIR_") and not _is_setting(n)]
    assert not unknown, f"{container['name']}: not settings of gpufair/settings.py: {unknown}"
    tree: dict[str, dict[str, str]] = {}
    for e in env:
        if "value" in e and e["name"].startswith("GPUFAIR_"):
            section, key = _setting_path(e["name"])
            tree.setdefault(section, {})[key] = e["value"]
    # The image has no config.toml: the literal values over the defaults must validate.
    Settings.model_validate(tree)


def test_secret_references_resolve() -> None:
    secrets = {
        d["metadata"]["name"]: set(d.get("stringData", {})) | set(d.get("data", {}))
        for d in _documents()
        if d["kind"] == "Secret"
    }
    for container in _containers():
        for e in container.get("env", []):
            ref = e.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                assert ref["key"] in secrets.get(ref["name"], set()), (container["name"], ref)


def test_api_and_executor_shape() -> None:
    docs = {(d["kind"], d["metadata"]["name"]): d for d in _documents()}
    api = docs[("Deployment", "gpufair-api")]
    assert api["spec"]["replicas"] == 2
    (container,) = api["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["GPUFAIR_API_DEV_MODE"]["value"] == "false"
    for name in ("GPUFAIR_DATABASE_URL", "GPUFAIR_API_ADMIN_TOKEN"):
        assert "secretKeyRef" in env[name]["valueFrom"], name
    # Readiness asks the database (a replica that cannot reach it takes no traffic); liveness
    # does not (a slow database is no reason to restart a replica).
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    jobs = [d for d in docs.values() if d["kind"] == "Job"]
    assert any(
        _gpufair_argv(c)[:2] == ["db", "upgrade"]
        for j in jobs
        for c in j["spec"]["template"]["spec"]["containers"]
    )

    executor = docs[("DaemonSet", "gpufair-executor")]["spec"]["template"]["spec"]
    (daemon,) = executor["containers"]
    assert daemon["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert any(t["key"] == "nvidia.com/gpu" for t in executor["tolerations"])
    argv = _gpufair_argv(daemon)
    assert argv[argv.index("--api") + 1] == "http://gpufair-api:8080"
    assert argv[argv.index("--port") + 1] == "9090"
    node_env = {e["name"]: e for e in daemon["env"]}
    assert node_env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert {p["containerPort"] for p in daemon["ports"]} == {9090}
    assert daemon["readinessProbe"]["httpGet"]["path"] == "/healthz"
    # Liveness asks whether the engine answers (a TCP probe passed with a wedged engine), and
    # waits past the front's own wait for it, so that the front's 503 is what fails it.
    assert daemon["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert daemon["livenessProbe"]["timeoutSeconds"] > ENGINE_ANSWER_S


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_docs_name_only_real_commands_and_settings(doc: Path) -> None:
    text = doc.read_text()
    # Commands are looked for in code (fenced blocks and `spans`), where prose cannot match.
    code = " ".join(re.findall(r"```.*?```|`[^`\n]+`", text, flags=re.S))
    unknown = sorted(
        {n for n in ENV_NAME.findall(text) if n not in NOT_SETTINGS and not _is_setting(n)}
    )
    assert not unknown, f"{doc.name} names settings that do not exist: {unknown}"
    # `kubectl -n gpufair ...`, `create namespace gpufair` and `gpufair.dump` are no commands.
    commands = set(re.findall(r"(?<!-n )(?<!namespace )\bgpufair ([a-z]+)\b(?![.\w-])", code))
    assert commands, f"{doc.name} names no gpufair command"
    assert commands <= set(COMMANDS), sorted(commands - set(COMMANDS))
