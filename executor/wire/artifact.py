"""The zoo reference ``zoo:<arch>?key=value&…``: one parser for the API and the executor.

A model's artifact may name a replica of the executor's model zoo (executor/models/zoo.py builds
it). The API checks a reference with :func:`parse_zoo_artifact` before it stores it and the
executor parses a plan's reference with the same function before it builds, so every reference
the API stores is one the executor builds, and the reverse. The parse gives a :class:`ZooSpec`
that obeys every rule below (:meth:`ZooSpec.check`). Every refusal is a :class:`ZooError` (a
ValueError) that quotes the reference and the bad value.

The rules:

- the reference is ``zoo:`` and an architecture, then optionally ``?`` and ``key=value`` fields
  joined by ``&`` (nothing after ``?`` is no fields);
- architectures: ``rmc1``, ``rmc2``, ``rmc3`` (DLRM), ``wnd`` (Wide & Deep) and ``din`` (DIN),
  exactly the ones the zoo builds; names are case-sensitive;
- keys: ``scale``, ``seed``, ``user_tables`` and ``candidate_dense``, each at most once; every
  architecture takes every key, as every builder takes the same knobs;
- values are plain ASCII numbers, taken as written: no percent-decoding, whitespace, ``+``,
  ``_`` separators or non-ASCII digits (all of which Python's ``int``/``float`` accept), so the
  text means one thing to every reader;
- ``scale`` (default 0.01), a decimal number with 0 < scale ≤ 1: the fraction of the nominal
  10⁶ rows per table. Above 1 would build tables larger than the production size the zoo
  models (RMC2 at 1 is already 8 GB of tables), so 5 and 1e300 are refused, as are 0 and
  ``1e999`` (which reads as infinity); ``nan`` and ``inf`` are not numbers here; a tiny scale
  still builds, with one row per table;
- ``seed`` (default 0), an integer in [0, 2⁶³ − 1]: torch's generator takes at most 64 bits,
  and a signed 64-bit seed also fits any int64 column or array that records it;
- ``user_tables`` (default ⌊7/8 · tables⌋), an integer in [0, tables]: how many sparse tables
  describe the user. Both ends build and serve: 0 puts every table on the candidate side.
  DIN's tables are its context tables; its behaviour sequence is always the user's;
- ``candidate_dense`` (default ⌊dense/4⌋), an integer in [0, dense]: how many dense values are
  per candidate, the rest being the user's. It is a knob of every builder, both ends included.

The table sizes below repeat the zoo's configurations (executor/models/dlrm.py, wnd.py, din.py),
which import torch; tests/executor/test_wire.py checks they agree.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

PREFIX = "zoo:"
DEFAULT_SCALE = 0.01
MAX_SEED = 2**63 - 1


@dataclass(frozen=True)
class ArchShape:
    """What the split parameters of one architecture range over."""

    tables: int  # sparse tables ``user_tables`` splits
    dense: int  # dense values ``candidate_dense`` splits


ARCHITECTURES: dict[str, ArchShape] = {
    "rmc1": ArchShape(tables=8, dense=128),
    "rmc2": ArchShape(tables=32, dense=256),
    "rmc3": ArchShape(tables=10, dense=2560),
    "wnd": ArchShape(tables=20, dense=32),
    "din": ArchShape(tables=8, dense=16),
}
KEYS = ("scale", "seed", "user_tables", "candidate_dense")

# ASCII only and no surrounding space; a leading minus is let through so that a negative value
# is refused by its range, with the bounds in the message.
_INT = re.compile(r"-?[0-9]+")
_REAL = re.compile(r"-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")


class ZooError(ValueError):
    """A zoo reference names an unknown architecture or has a bad parameter."""


def _shape(arch: str) -> ArchShape:
    shape = ARCHITECTURES.get(arch)
    if shape is None:
        raise ZooError(f"unknown architecture {arch!r}; known: {', '.join(ARCHITECTURES)}")
    return shape


def _check_int(key: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ZooError(f"{key} must be an integer, got {value!r}")
    if not low <= value <= high:
        raise ZooError(f"{key} must be in [{low}, {high}], got {value!r}")


@dataclass(frozen=True)
class ZooSpec:
    """One zoo replica, as a reference names it.

    :meth:`check` applies the rules of the module docstring. :func:`parse_zoo_artifact` returns
    checked specs only and ``build_model`` checks the spec it is given, so one made in code
    (``gpufair profile`` makes its own) meets the same rules before anything is built.
    """

    arch: str
    scale: float = DEFAULT_SCALE
    seed: int = 0
    user_tables: int | None = None  # None: ⌊7/8 · tables⌋
    candidate_dense: int | None = None  # None: ⌊dense/4⌋

    def check(self) -> ZooSpec:
        """Return this spec if it obeys every rule; else raise ZooError quoting the bad value."""
        shape = self.shape
        if isinstance(self.scale, bool) or not isinstance(self.scale, int | float):
            raise ZooError(f"scale must be a number, got {self.scale!r}")
        # `not (0 < x <= 1)` also refuses nan, which compares false with everything.
        if not 0 < self.scale <= 1:
            raise ZooError(f"scale must be in (0, 1], got {self.scale!r}")
        _check_int("seed", self.seed, 0, MAX_SEED)
        if self.user_tables is not None:
            _check_int("user_tables", self.user_tables, 0, shape.tables)
        if self.candidate_dense is not None:
            _check_int("candidate_dense", self.candidate_dense, 0, shape.dense)
        return self

    @property
    def shape(self) -> ArchShape:
        """The architecture's split bounds; ZooError for an unknown architecture."""
        return _shape(self.arch)

    @property
    def effective_user_tables(self) -> int:
        """``user_tables``, or the architecture's default when it is None."""
        if self.user_tables is None:
            return self.shape.tables * 7 // 8
        return self.user_tables

    @property
    def effective_candidate_dense(self) -> int:
        """``candidate_dense``, or the architecture's default when it is None."""
        if self.candidate_dense is None:
            return self.shape.dense // 4
        return self.candidate_dense

    @property
    def artifact(self) -> str:
        """The canonical reference, every default written out: it parses back to this replica
        (and, for a spec that fails :meth:`check`, is refused as the spec would be).

        ``repr`` writes the shortest text that reads back as the same float (``:g`` would keep
        six digits and name another scale).
        """
        return (
            f"{PREFIX}{self.arch}?scale={self.scale!r}&seed={self.seed}"
            f"&user_tables={self.effective_user_tables}"
            f"&candidate_dense={self.effective_candidate_dense}"
        )


def _integer(key: str, text: str) -> int:
    if not _INT.fullmatch(text):
        raise ZooError(f"could not convert {key}={text!r} to an integer")
    try:
        return int(text)
    except ValueError:  # more digits than Python converts
        raise ZooError(f"{key}={text[:40]!r}…: too many digits") from None


def _real(key: str, text: str) -> float:
    if not _REAL.fullmatch(text):
        raise ZooError(f"could not convert {key}={text!r} to a number")
    return float(text)


def parse_zoo_artifact(artifact: str) -> ZooSpec:
    """Parse ``zoo:<arch>[?key=value&…]``; raise ZooError quoting the reference and bad value."""
    try:
        if not artifact.startswith(PREFIX):
            raise ZooError(f"expected '{PREFIX}<arch>[?key=value&...]'")
        arch, _, query = artifact.removeprefix(PREFIX).partition("?")
        _shape(arch)  # an unknown architecture is the first thing to say
        fields: dict[str, str] = {}
        for field in query.split("&") if query else []:
            key, equals, text = field.partition("=")
            if not equals:
                raise ZooError(f"expected key=value, got {field!r}")
            if key not in KEYS:
                raise ZooError(f"unknown parameter {key!r}; known: {', '.join(KEYS)}")
            if key in fields:
                raise ZooError(f"parameter {key!r} given twice")
            fields[key] = text
        return ZooSpec(
            arch,
            scale=_real("scale", fields["scale"]) if "scale" in fields else DEFAULT_SCALE,
            seed=_integer("seed", fields["seed"]) if "seed" in fields else 0,
            user_tables=(
                _integer("user_tables", fields["user_tables"]) if "user_tables" in fields else None
            ),
            candidate_dense=(
                _integer("candidate_dense", fields["candidate_dense"])
                if "candidate_dense" in fields
                else None
            ),
        ).check()
    except ZooError as exc:
        raise ZooError(f"artifact {artifact!r}: {exc}") from None
