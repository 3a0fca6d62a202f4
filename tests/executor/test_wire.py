"""executor.wire: the contracts the API and the executor share, and that both sides keep them.

A zoo reference the API stores is a replica the executor must build, and a node name the API
registers is one ``gpufair executor --node`` must take: each table below states the verdict
once and asserts it on both sides.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import TypeAdapter, ValidationError

from api.schemas import ArtifactRef, Name
from executor.features import Batch
from executor.models import ZooError, build_model, expand_rows, parse_zoo_artifact
from executor.models import zoo as executor_zoo
from executor.models.din import DIN_CONFIG
from executor.models.dlrm import RMC1, RMC2, RMC3
from executor.models.wnd import WND
from executor.wire import artifact as wire_artifact
from executor.wire.artifact import ARCHITECTURES, MAX_SEED, ZooSpec
from executor.wire.heartbeat import Heartbeat
from executor.wire.names import InvalidNameError, validate_node_name
from gpufair.commands import executor as executor_command
from tests.name_cases import NODE_NAMES

# Zoo references and whether both sides take them. Accepted ones are small enough to build.
ZOO_REFERENCES: list[tuple[str, bool]] = [
    ("zoo:rmc1", True),
    ("zoo:rmc2?scale=0.0005&seed=7", True),
    ("zoo:rmc1?scale=1e-05", True),  # how ZooSpec.artifact writes a small scale
    ("zoo:rmc2?scale=0.0005&candidate_dense=3", True),  # a real knob of every builder
    ("zoo:wnd?scale=0.0005&user_tables=0", True),  # every table on the candidate side
    ("zoo:din?scale=0.0005&user_tables=8&candidate_dense=16", True),  # everything maximal
    ("zoo:rmc3?scale=0.0005&candidate_dense=0&seed=9223372036854775807", True),
    ("zoo:nosuch?scale=0.5", False),
    ("zoo:RMC1", False),
    ("zoo:", False),
    ("rmc1", False),
    ("file:/etc/passwd", False),
    ("zoo:rmc1?scale=5", False),
    ("zoo:rmc1?scale=1e300", False),
    ("zoo:rmc1?scale=0", False),
    ("zoo:rmc1?scale=nan", False),
    ("zoo:rmc1?scale=inf", False),
    ("zoo:rmc1?user_tables=9", False),  # RMC1 has 8 tables
    ("zoo:rmc1?user_tables=1000000000", False),
    ("zoo:rmc1?candidate_dense=129", False),  # RMC1 has 128 dense values
    ("zoo:rmc1?candidate_dense=-1", False),
    ("zoo:rmc1?seed=-1", False),
    ("zoo:rmc1?seed=18446744073709551616", False),  # past torch's 64-bit generator seed
    ("zoo:rmc1?seed=1.5", False),
    ("zoo:rmc1?seed= 1", False),
    ("zoo:rmc1?seed=1&seed=2", False),
    ("zoo:rmc1?scale=%30.5", False),  # values are plain numbers, not percent-encoded
    ("zoo:rmc1?&", False),
    ("zoo:rmc1?seed", False),
    ("zoo:rmc1?colour=red", False),
]

api_artifact = TypeAdapter(ArtifactRef)



def _scores(model, batch: Batch) -> tuple[np.ndarray, np.ndarray]:
    t = torch.from_numpy
    args = (
        t(batch.user_dense),
        {f: t(a) for f, a in batch.user_sparse.items()},
        t(batch.candidate_dense),
        {f: t(a) for f, a in batch.candidate_sparse.items()},
        t(batch.candidate_user),
    )
    with torch.inference_mode():
        return model(*args).numpy(), model.forward_naive(*expand_rows(*args)).numpy()


@pytest.mark.parametrize(("artifact", "accepted"), ZOO_REFERENCES)
def test_the_api_stores_exactly_the_zoo_references_the_executor_builds(
    artifact: str, accepted: bool
) -> None:
    if accepted:
        assert api_artifact.validate_python(artifact) == artifact
        model = build_model(parse_zoo_artifact(artifact))
        batch = Batch.of([model.schema.random_query(np.random.default_rng(0), n) for n in (3, 5)])
        structured, naive = _scores(model, batch)
        np.testing.assert_allclose(structured, naive, rtol=0, atol=1e-5)
    else:
        with pytest.raises(ValidationError):
            api_artifact.validate_python(artifact)
        with pytest.raises(ZooError):
            build_model(parse_zoo_artifact(artifact))




def _valid_node_name(name: str) -> bool:
    try:
        assert validate_node_name(name) == name
    except InvalidNameError as exc:
        assert repr(name) in str(exc)
        return False
    return True


def _takes(adapter: TypeAdapter[str], value: str) -> bool:
    try:
        adapter.validate_python(value)
    except ValidationError:
        return False
    return True


class _Started(Exception):
    """Raised where ``gpufair executor`` would start talking to the API."""


@pytest.mark.parametrize(("name", "accepted"), NODE_NAMES)
def test_gpufair_executor_takes_exactly_the_node_names_the_api_registers(
    name: str, accepted: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    def started(*args: object, **kwargs: object) -> None:
        raise _Started

    assert _takes(TypeAdapter(Name), name) == accepted
    assert _valid_node_name(name) == accepted
    monkeypatch.setattr("executor.plan_client.PlanClient", started)
    argv = ["--api", "http://127.0.0.1:9", f"--node={name}", "--token", "t", "--backend", "fake"]
    argv += ["--state-dir", str(tmp_path)]
    if accepted:
        with pytest.raises(_Started):
            executor_command.main(argv)
    else:
        assert executor_command.main(argv) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "--node" in err and repr(name) in err


def test_the_wire_package_loads_no_torch() -> None:
    """The API imports these contracts; torch (seconds, gigabytes) must stay the executor's."""
    script = (
        "import importlib, json, pkgutil, sys\n"
        "import executor.wire as wire\n"
        "for module in pkgutil.iter_modules(wire.__path__):\n"
        "    importlib.import_module(f'executor.wire.{module.name}')\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'torch')))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120
    )
    assert json.loads(done.stdout) == []


@pytest.mark.parametrize(
    ("artifact", "spec"),
    [
        ("zoo:rmc2", ZooSpec("rmc2")),
        ("zoo:rmc2?", ZooSpec("rmc2")),
        ("zoo:din?seed=4&scale=0.5", ZooSpec("din", 0.5, 4)),
        ("zoo:rmc1?scale=1&user_tables=0&candidate_dense=128", ZooSpec("rmc1", 1.0, 0, 0, 128)),
        ("zoo:wnd?scale=.25&candidate_dense=0", ZooSpec("wnd", 0.25, candidate_dense=0)),
        ("zoo:rmc3?scale=5e-324", ZooSpec("rmc3", 5e-324)),
        (f"zoo:rmc3?seed={MAX_SEED}", ZooSpec("rmc3", seed=MAX_SEED)),
    ],
)
def test_a_reference_parses_to_its_spec_and_back(artifact: str, spec: ZooSpec) -> None:
    assert wire_artifact.parse_zoo_artifact(artifact) == spec
    # The canonical reference writes every default out and names the same replica.
    canonical = spec.artifact
    again = wire_artifact.parse_zoo_artifact(canonical)
    assert again.artifact == canonical
    assert (again.effective_user_tables, again.effective_candidate_dense) == (
        spec.effective_user_tables,
        spec.effective_candidate_dense,
    )


def test_the_canonical_reference_keeps_every_digit_of_the_scale() -> None:
    spec = ZooSpec("rmc2", scale=0.0123456789)
    assert wire_artifact.parse_zoo_artifact(spec.artifact).scale == spec.scale


@pytest.mark.parametrize(
    ("artifact", "quoted"),
    [
        ("zoo:nosuch?scale=0.5", "'nosuch'"),
        ("zoo:rmc1?scale=1e300", "1e+300"),
        ("zoo:rmc1?scale=1e999", "inf"),
        ("zoo:rmc1?scale=0", "0.0"),
        ("zoo:rmc1?scale=nan", "'nan'"),
        ("zoo:rmc1?user_tables=1000000000", "1000000000"),
        ("zoo:rmc1?candidate_dense=129", "129"),
        ("zoo:rmc1?seed=-1", "-1"),
        ("zoo:rmc1?seed=18446744073709551616", "18446744073709551616"),
        ("zoo:rmc1?seed=1.5", "'1.5'"),
        ("zoo:rmc1?seed=%31", "'%31'"),
        ("zoo:rmc1?seed=\u0663", "'\u0663'"),  # an Arabic-Indic 3, which int() would take
        ("zoo:rmc1?seed=1&seed=2", "'seed'"),
        ("zoo:rmc1?colour=red", "'colour'"),
        ("zoo:rmc1?&", "''"),
        ("file:/x", "'file:/x'"),
        ("zoo:rmc1?seed=" + "9" * 5000, "9999"),  # past the digits Python converts
    ],
)
def test_a_bad_reference_is_one_zoo_error_quoting_the_bad_value(artifact: str, quoted: str) -> None:
    with pytest.raises(wire_artifact.ZooError) as caught:
        wire_artifact.parse_zoo_artifact(artifact)
    message = str(caught.value)
    assert isinstance(caught.value, ValueError) and message.startswith("artifact '")
    assert quoted in message


def test_the_executor_and_the_api_use_the_wire_parser_itself() -> None:
    assert parse_zoo_artifact is wire_artifact.parse_zoo_artifact
    assert ZooError is wire_artifact.ZooError and executor_zoo.ZooSpec is ZooSpec


def test_the_wire_sizes_are_the_zoo_configurations() -> None:
    configs = {
        "rmc1": (RMC1.tables, RMC1.dense),
        "rmc2": (RMC2.tables, RMC2.dense),
        "rmc3": (RMC3.tables, RMC3.dense),
        "wnd": (WND.tables, WND.dense),
        "din": (DIN_CONFIG.context_tables, DIN_CONFIG.dense),
    }
    assert set(ARCHITECTURES) == set(executor_zoo.ARCHITECTURES) == set(configs)
    assert {a: (s.tables, s.dense) for a, s in ARCHITECTURES.items()} == configs


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_every_split_within_the_bounds_builds_and_none_beyond(arch: str) -> None:
    shape = ARCHITECTURES[arch]
    rng = np.random.default_rng(1)
    for user_tables in (0, shape.tables):
        for candidate_dense in (0, shape.dense):
            spec = ZooSpec(arch, 0.0005, 2, user_tables, candidate_dense)
            model = build_model(wire_artifact.parse_zoo_artifact(spec.artifact))
            schema = model.schema
            assert (schema.user_dense, schema.candidate_dense) == (
                shape.dense - candidate_dense,
                candidate_dense,
            )
            history = 1 if arch == "din" else 0  # DIN's behaviour sequence is the user's
            assert len(schema.features("user")) == user_tables + history
            batch = Batch.of([schema.random_query(rng, n) for n in (1, 6)])
            structured, naive = _scores(model, batch)
            np.testing.assert_allclose(structured, naive, rtol=0, atol=1e-5)
    for beyond in (
        {"user_tables": shape.tables + 1},
        {"user_tables": -1},
        {"candidate_dense": shape.dense + 1},
        {"candidate_dense": -1},
    ):
        with pytest.raises(ZooError, match=next(iter(beyond))):
            ZooSpec(arch, **beyond).check()


@pytest.mark.parametrize(
    "fields",
    [
        {"scale": 0.0},
        {"scale": 1.5},
        {"scale": float("nan")},
        {"scale": True},
        {"seed": -1},
        {"seed": MAX_SEED + 1},
        {"seed": 1.0},
        {"user_tables": True},
    ],
)
def test_a_spec_made_in_code_obeys_the_same_rules(fields: dict[str, object]) -> None:
    spec = ZooSpec("rmc1", **fields)  # type: ignore[arg-type]
    with pytest.raises(ZooError, match=next(iter(fields))):
        spec.check()
    with pytest.raises(ZooError, match=next(iter(fields))):
        build_model(spec)
    with pytest.raises(ZooError, match=next(iter(fields))):
        wire_artifact.parse_zoo_artifact(spec.artifact)


@pytest.mark.parametrize(
    ("given", "sent"),
    [
        ("http://10.0.0.7:9090", "http://10.0.0.7:9090"),
        ("http://node-a.cluster.local:9090/", "http://node-a.cluster.local:9090"),
        ("https://[fd00::7]:443", "https://[fd00::7]:443"),
        ("http://node-a:9090/v2", None),
        ("node-a:9090", None),
        ("ftp://node-a:9090", None),
        ("http://node a:9090", None),
        ("http://" + "a" * 260 + ":9090", None),
    ],
)
def test_the_advertised_url_is_checked_at_start_as_every_heartbeat_checks_it(
    given: str, sent: str | None, capsys: pytest.CaptureFixture[str]
) -> None:
    """An --advertise-url with a path (a trailing slash too) was taken, then refused by the
    heartbeat contract in every heartbeat, so the node never entered the routing table: the
    command now sends what the contract takes (a trailing slash dropped) or refuses at start."""
    argv = ["--api", "http://api:8080", "--node", "n", "--advertise-url", given]
    if sent is None:
        with pytest.raises(SystemExit) as exit_:
            executor_command._parser().parse_args(argv)
        assert exit_.value.code == 2
        assert "argument --advertise-url:" in capsys.readouterr().err
        return
    assert executor_command._parser().parse_args(argv).advertise_url == sent
    assert Heartbeat(url=sent).url == sent
