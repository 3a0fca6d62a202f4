"""Schemathesis against the OpenAPI document: no generated request, valid or not, gets a 5xx.

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
from schemathesis.core.result import Err
from schemathesis.generation import GenerationMode

from api.app import create_app
from gpufair.compose import api_config
from gpufair.settings import Settings
from tests.api.conftest import Api

EXAMPLES = {GenerationMode.POSITIVE: 25, GenerationMode.NEGATIVE: 15}
# A solve per example is the slow path: fewer of them.
SLOW_OPERATIONS = {"POST /v1/allocations": 3}


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
def test_no_server_errors(settings: Settings) -> None:
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
                if response.status_code >= 500:
                    failures.append(
                        f"{case.operation.label} -> {response.status_code}: "
                        f"{case.as_curl_command()}\n{response.text[:300]}"
                    )

            try:
                run()
            except Unsatisfiable:
                # Negative mode on an operation whose every input is valid: nothing to break.
                assert mode == GenerationMode.NEGATIVE, operation.label
    assert calls > 200
    assert failures == [], "\n\n".join(failures[:10])
