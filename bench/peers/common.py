"""What every peer server shares: the model it loads, the request it parses, the reply it sends.

A request is the daemon's: an Open Inference Protocol body with binary tensors
(``Inference-Header-Content-Length``), parsed by the daemon's own codec
(:func:`executor.codec.parse_query_oip`: decoding and validation against the schema), and the
reply is the daemon's (:func:`executor.codec.scores_to_oip`), so every server does the same wire
work on the same bytes as gpufair.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from executor import codec
from executor.features import Query
from executor.models.schema import ModelSchema
from executor.wire import oip

INFER_PATH = "/v2/models/{model}/infer"  # the route every server serves, the daemon's


def parse_request(
    schema: ModelSchema, body: bytes, headers: Mapping[str, str]
) -> tuple[Query, oip.InferRequest]:
    """The query of a request and what it asks of the reply; ValueError for a bad one."""
    declared = headers.get(oip.HEADER_LENGTH.lower())
    if declared is not None and not declared.isdigit():
        raise ValueError(f"{oip.HEADER_LENGTH}: expected a byte count, got {declared!r}")
    return codec.parse_query_oip(schema, body, None if declared is None else int(declared))


def reply(
    model: str, scores: np.ndarray, request: oip.InferRequest
) -> tuple[bytes, dict[str, str]]:
    """The reply's body and headers, as the daemon answers."""
    content, header_length = codec.scores_to_oip(model, scores, request)
    if header_length is None:
        return content, {"content-type": "application/json"}
    return content, {
        "content-type": oip.BINARY_CONTENT_TYPE,
        oip.HEADER_LENGTH: str(header_length),
    }
