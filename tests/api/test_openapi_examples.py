"""Every operation of the OpenAPI document carries an example, recorded from the API itself.

``api/openapi_examples.json`` holds, per operation, a request body and the success reply that
a real run of the API gave (the authorisation matrix's world and calls, tests/api/test_authz.py);
``api/openapi.py`` puts them into the document. A test records them again and checks that the
stored ones still have the reply's shape (the same keys, recursively), so an example cannot
drift from the schema unnoticed; ``GPUFAIR_UPDATE_EXAMPLES=1`` rewrites the file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from api.openapi import EXAMPLES_PATH
from tests.api.conftest import Api
from tests.api.test_authz import ROUTES, SECRET, _call, _world

# Placeholders of the matrix's paths -> the document's path parameters.
PARAMETERS = [
    ("{a}", "{tenant}"), ("{c}", "{tenant}"), ("{a_model}", "{model}"),
    ("{a_model_spare}", "{model}"), ("{a_upload}", "{model}"), ("{a_key_spare}", "{key_id}"),
    ("{a_key_admin}", "{key_id}"), ("n1", "{node}"), ("n2", "{node}"),
    ("{allocation}/diff/{allocation}", "{allocation}/diff/{other}"),
]  # fmt: skip


def _record(api: Api) -> dict[str, dict[str, Any]]:
    world = _world(api)
    tokens = world["tokens"]
    recorded: dict[str, dict[str, Any]] = {}
    for method, template, role, ok, body in ROUTES:
        path = template.format(**{k: v for k, v in world.items() if k != "tokens"})
        token = None if role == "public" else tokens["tenant_a" if role == "tenant" else role]
        reply = _call(api, method, path, token, body, world)
        assert reply.status_code == ok, (method, template, reply.text)
        label = template
        for placeholder, parameter in PARAMETERS:
            label = label.replace(placeholder, parameter)
        example: dict[str, Any] = {}
        if body == "profiles":  # what _call sends for it
            body = {"profiles": [{"model_id": world["a_upload"], "device": "cuda:0",
                                  "qps": [10, 20]}]}  # fmt: skip
        if isinstance(body, dict):
            example["request"] = body
        if reply.headers.get("content-type", "").startswith("application/json"):
            example["reply"] = reply.json()
        if example:
            recorded[f"{method} {label}"] = example
    # The matrix names tenant A's things after a marker it hunts for in replies; not here.
    return json.loads(json.dumps(recorded).replace(SECRET, "ranking"))


def _shape(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in sorted(value.items())}
    if isinstance(value, list):
        return [_shape(value[0])] if value else []
    return type(value).__name__ if value is not None else None


def test_the_examples_are_replies_of_the_api_as_it_is(api: Api) -> None:
    recorded = _record(api)
    if os.environ.get("GPUFAIR_UPDATE_EXAMPLES") == "1":
        Path(EXAMPLES_PATH).write_text(json.dumps(recorded, indent=1, sort_keys=True) + "\n")
    stored = json.loads(Path(EXAMPLES_PATH).read_text())
    assert sorted(stored) == sorted(recorded)
    for label, example in recorded.items():
        assert _shape(stored[label]) == _shape(example), label


def test_every_operation_carries_an_example(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    missing = []
    for path, item in document["paths"].items():
        for method, operation in item.items():
            label = f"{method.upper()} {path}"
            body = operation.get("requestBody", {}).get("content", {}).get("application/json")
            if body is not None and "example" not in body:
                missing.append(f"{label} request")
            for status, reply in operation["responses"].items():
                content = reply.get("content", {}).get("application/json")
                if status.startswith("2") and content is not None and "example" not in content:
                    missing.append(f"{label} {status}")
    assert missing == []
