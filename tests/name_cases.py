"""Node names, and whether the one naming rule (executor/wire/names.py) takes them: the table
that both the executor's and the API's tests check their side against."""

from __future__ import annotations

NODE_NAMES: list[tuple[str, bool]] = [
    ("n1", True),
    ("0node", True),
    ("gpu-node.1_a", True),
    ("a" * 64, True),
    ("GPU1", False),
    ("Node-1", False),
    ("a" * 65, False),
    ("-n1", False),
    (".hidden", False),
    ("a/b", False),
    ("n1\n", False),  # Python's `$` would let a trailing newline through
    ("nöde", False),
]
