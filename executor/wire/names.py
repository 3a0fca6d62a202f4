"""Names the API and the executor share: one rule each, so both sides refuse the same names.

``NAME_PATTERN`` names tenants, models and nodes: 1 to 64 lowercase ASCII letters, digits,
``.``, ``_`` or ``-``, starting with a letter or digit. The API registers a node under it and
serves the node at ``/v1/nodes/{name}``; ``gpufair executor --node`` checks its name with
:func:`validate_node_name` before it starts, so a daemon never runs under a name whose plan it
could not fetch. The executor also makes the name a directory (``var/executor/NAME``): no
separator and no leading dot keep it one safe path component, and lowercase keeps two nodes
from sharing one directory on a case-insensitive file system.

``DEVICE_NAME_PATTERN`` names a node's devices as torch writes them, a type and an index
(``cuda:0``, ``cpu:0``): the executor runs a plan's ``cpu`` devices on the CPU and hands the
others to torch.

The patterns are anchored for pydantic, which searches; Python code matches them whole with
``fullmatch``, so a trailing newline (which ``$`` lets through in ``re.match``) is refused by
both. :data:`DeviceName` is the pattern as a pydantic type, for the contracts that carry a
device (the API's node registration, the profile upload).

``MAX_ID`` bounds the ids and versions both sides exchange (a model id, a plan version): the
API's database keeps them in 32-bit integers, so a larger one is a 422, not a driver error.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import Field

NAME_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,63}$"
DEVICE_NAME_PATTERN = r"^[a-z][a-z0-9]{0,15}:[0-9]{1,4}$"
MAX_ID = 2**31 - 1

DeviceName = Annotated[str, Field(pattern=DEVICE_NAME_PATTERN, examples=["cuda:0"])]

_NAME = re.compile(NAME_PATTERN)


class InvalidNameError(ValueError):
    """A name breaks its rule; the message quotes it."""


def validate_node_name(name: str) -> str:
    """Return ``name`` if the API can register it as a node; else raise InvalidNameError."""
    if _NAME.fullmatch(name) is None:
        raise InvalidNameError(
            f"node name {name!r}: expected 1 to 64 lowercase letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name
