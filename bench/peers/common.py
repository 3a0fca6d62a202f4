"""What every peer server shares: the model it loads and the query body it parses.

The body is parsed by the daemon's own codec (:func:`executor.codec.parse_query_npz`) and the
reply is the daemon's ``.npy`` of float32 scores, so the peers do the same wire work as gpufair.
"""

from __future__ import annotations

import io

import numpy as np

from executor import codec
from executor.features import Query
from executor.models.schema import ModelSchema

NPY_TYPE = "application/x-npy"


def parse_body(schema: ModelSchema, body: bytes) -> Query:
    """The query of a request body; ValueError (codec.QueryError) for a bad one."""
    return codec.parse_query_npz(schema, body)


def npy_reply(scores: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.save(out, np.asarray(scores, dtype=np.float32), allow_pickle=False)
    return out.getvalue()
