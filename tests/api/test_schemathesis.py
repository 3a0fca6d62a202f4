"""Schemathesis against the OpenAPI document: no generated request, valid or not, gets a 5xx,
and every reply is as documented — its status among the operation's, its content type and its
body matching the schema (the error envelope included, api/openapi.py).

Every operation is fuzzed with the token of the role it belongs to (so requests reach the
service code rather than stopping at 401) in both of Schemathesis's modes: positive (bodies
and parameters the schema allows) and negative (ones it forbids, which must be 4xx). Node
operations get the node's own name in their path. Examples per operation are bounded so the
run takes about half a minute per database; Hypothesis is derandomised (seeded) as everywhere.
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.core.result import Err
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from api.app import create_app
from gpufair.compose import api_config
from gpufair.settings import Settings
from tests.api.conftest import Api

EXAMPLES = {GenerationMode.POSITIVE: 25, GenerationMode.NEGATIVE: 15}
# A solve per example is the slow path: fewer of them.
SLOW_OPERATIONS = {"POST /v1/allocations": 3}
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


def _world(client: TestClient) -> dict[str, str]:
    api = Api(client)
    _, key = api.tenant("ads")
    _, other = api.tenant("feed")
    api.model(key, "ranker", replicas_wanted=1)
    api.model(other, "ranker", replicas_wanted=1)
    _, node_token = api.node("n1", gpus=1, seats=2, streams=4)
    api.solve()
    return {
        "admin": api.admin["Authorization"],
        "tenant": f"Bearer {key}",
        "node": f"Bearer {node_token}",
    }


@pytest.mark.slow
def test_no_server_errors_and_every_reply_as_documented(settings: Settings) -> None:
    app = create_app(api_config(settings))
    with TestClient(app) as client:
        tokens = _world(client)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    failures: list[str] = []
    calls = 0
    for result in schema.get_all_operations():
        if isinstance(result, Err):
            raise result.err()
        operation = result.ok()
        tags = operation.definition.raw.get("tags", [])
        role = next((t for t in ("admin", "tenant", "node") if t in tags), None)
        headers = {"Authorization": tokens[role]} if role else {}
        path_parameters: dict[str, Any] = {"node": "n1"} if role == "node" else {}
        for mode, examples in EXAMPLES.items():
            strategy = operation.as_strategy(
                generation_mode=mode,
                headers=headers,
                path_parameters=path_parameters or None,
            )

            @given(case=strategy)
            @hypothesis_settings(
                max_examples=SLOW_OPERATIONS.get(operation.label, examples),
                deadline=None,
                derandomize=True,
                database=None,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            def run(case: Any) -> None:
                nonlocal calls
                calls += 1
                response = case.call()
                try:
                    case.validate_response(response, checks=CHECKS)
                except (AssertionError, FailureGroup) as exc:
                    failures.append(
                        f"{case.operation.label} -> {response.status_code}: {exc}\n"
                        f"{case.as_curl_command()}\n{response.text[:300]}"
                    )

            try:
                run()
            except Unsatisfiable:
                # Negative mode on an operation whose every input is valid: nothing to break.
                assert mode == GenerationMode.NEGATIVE, operation.label
    assert calls > 200
    assert failures == [], "\n\n".join(failures[:10])


def test_every_operation_is_described_and_its_errors_are_the_envelope(client: TestClient) -> None:
    """The document states each operation's purpose and every error status it can answer
    with the body the API sends (``{"error": …}``), never FastAPI's ``{"detail": …}``."""
    document = client.get("/openapi.json").json()
    assert "HTTPValidationError" not in str(document)
    operations = [
        (f"{method.upper()} {path}", operation)
        for path, item in document["paths"].items()
        for method, operation in item.items()
    ]
    assert len(operations) > 30
    for label, operation in operations:
        assert operation.get("description"), label
        responses = operation["responses"]
        errors = {status: r for status, r in responses.items() if int(status) >= 400}
        for status, response in errors.items():
            schema = response["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/ErrorBody"}, (label, status)
        if operation.get("security"):
            assert {"401", "403", "429", "503"} <= set(responses), label
        if "{" in label:
            assert "404" in responses, label
