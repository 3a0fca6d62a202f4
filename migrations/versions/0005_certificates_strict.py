"""Stored certificates in the strict format of issue 12, so allocations stored before it read.

The certificate format changed (docs/fairness.md, "The certificate"): ``holds`` and ``slack`` of
an agent now say whether its criterion holds *exactly* (λ = 0), ``lambda`` is the *least*
relaxation under which it holds (null: not even at λ = 1), the top-level ``holds`` is gone
(``fair`` says it) and ``relaxed``, ``lambda_lower_bound``, ``guarantee`` and each row's
``guaranteed`` are new. The old format checked every EF-type agent at one applied λ (and
PROP-type ones at another) and said whether the criterion held *at that λ*. The API reads
stored certificates with the strict parser, so an old row made every read of its allocation
fail.

Why the rows are converted, not recomputed: ``allocator.certify`` needs the instance the
allocation divided — every tenant's values of every seat and pool, built from the models,
profiles and candidate seats of the moment of the solve — and that instance was never stored
(only the certificate, the tenants' ids and the plans). Recomputing from today's rows would
certify a different instance under the old allocation's name. So each old row is rewritten
into what its stored figures prove, and never more:

- checked at λ = 0 (the criterion exactly): ``holds`` and ``slack`` are exact as stored; the
  least λ is 0 when it held, unknown when it failed — stated as null (failing even at λ = 1),
  the pessimistic reading;
- checked relaxed (λ > 0): whether it holds exactly is unknown, so ``holds`` is false and
  ``slack`` null; ``lambda`` is the stored λ when it held there (an upper bound on the least
  one), null when it failed;
- ``guaranteed`` false, ``guarantee`` and ``lambda_lower_bound`` null: nothing was claimed.

``fair``, ``relaxed``, ``violations`` and the two top-level λ follow from the rows as the
allocator computes them, and a note names the rows whose figures are bounds, so nobody reads
a converted certificate as a fresh one. Documents already in the new format are left alone,
so the migration can run twice. The downgrade writes the old format back (lossless for rows
checked exactly; a row whose least λ is known becomes a row checked at that λ).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07
"""

from __future__ import annotations

import json
from typing import Any

from alembic import op
from sqlalchemy import JSON, Connection, Integer, column, select, table, update

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# The columns this migration touches, as they are at this revision (the ORM may move on).
ALLOCATIONS = table("allocations", column("id", Integer), column("certificate", JSON))

# allocator.criteria.EF_TYPE at this revision; the others are PROP-type.
EF_TYPE = frozenset({"ef_alpha", "ef", "ef1", "efm"})
NOTE = (
    "re-certified from a certificate of an older gpufair by migration 0005: the instance was "
    "not stored, so the rows of {agents} state bounds, not exact figures (holds false and slack "
    "null where the criterion was checked only relaxed; lambda the relaxation it was checked "
    "at, an upper bound on the least, or null where it failed)"
)


def _is_old(document: Any) -> bool:
    return isinstance(document, dict) and "holds" in document and "relaxed" not in document


def _new_row(row: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """The row in the strict format, and whether its figures are bounds rather than exact."""
    applied, held = float(row["lambda"]), bool(row["holds"])
    kept = {k: row[k] for k in ("alpha", "criterion", "weight", "value", "normalised_value",
                                "total", "envy")}
    if applied == 0.0:
        return {**kept, "holds": held, "slack": row["slack"], "lambda": 0.0 if held else None,
                "factor": row["factor"] if held else None, "guaranteed": False}, not held
    return {**kept, "holds": False, "slack": None, "lambda": applied if held else None,
            "factor": row["factor"] if held else None, "guaranteed": False}, True


def _largest(rows: list[dict[str, Any]]) -> float:
    return max((r["lambda"] for r in rows if r["lambda"] is not None), default=0.0)


def upgraded(document: dict[str, Any]) -> dict[str, Any]:
    """An old-format certificate document in the strict format (see the module docstring)."""
    agents: dict[str, dict[str, Any]] = {}
    bounded: list[str] = []
    for name, row in document["agents"].items():
        agents[name], is_bound = _new_row(row)
        if is_bound:
            bounded.append(name)
    rows = list(agents.values())
    notes = list(document.get("notes", []))
    if bounded:
        notes.append(NOTE.format(agents=", ".join(repr(n) for n in sorted(bounded))))
    return {
        "fair": all(r["holds"] for r in rows),
        "relaxed": any(r["lambda"] is not None and r["lambda"] > 0 for r in rows),
        "violations": sum(1 for r in rows if r["lambda"] is None),
        "lambda": _largest([r for r in rows if r["criterion"] in EF_TYPE]),
        "lambda_prop": _largest([r for r in rows if r["criterion"] not in EF_TYPE]),
        "lambda_lower_bound": None,
        "guarantee": None,
        "agents": agents,
        "objective": document["objective"],
        "objective_value": document["objective_value"],
        "unconstrained_value": document["unconstrained_value"],
        "ratio": document["ratio"],
        "solver": document["solver"],
        "status": document["status"],
        "gap": document["gap"],
        "time_s": document["time_s"],
        "notes": notes,
    }


def downgraded(document: dict[str, Any]) -> dict[str, Any]:
    """A strict certificate document in the old format: each row checked at its least λ (1
    where it fails even there), the old top-level ``holds`` back."""
    agents = {}
    for name, row in document["agents"].items():
        lam = row["lambda"]
        agents[name] = {
            **{k: row[k] for k in ("alpha", "criterion", "weight", "value", "normalised_value",
                                   "total", "envy", "slack")},
            "holds": lam is not None,
            "lambda": 1.0 if lam is None else lam,
            "factor": 1.0 if row["factor"] is None else row["factor"],
        }
    fair = all(r["holds"] for r in agents.values())
    notes = [n for n in document["notes"] if not n.startswith(NOTE[:40])]
    return {
        "fair": fair,
        "holds": fair,
        "violations": sum(1 for r in agents.values() if not r["holds"]),
        "agents": agents,
        **{k: document[k] for k in ("objective", "objective_value", "unconstrained_value",
                                    "ratio", "lambda", "lambda_prop", "solver", "status",
                                    "gap", "time_s")},
        "notes": notes,
    }


def _as_document(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def _rewrite(connection: Connection, *, old: bool) -> None:
    rows = connection.execute(select(ALLOCATIONS.c.id, ALLOCATIONS.c.certificate)).all()
    for allocation_id, stored in rows:
        document = _as_document(stored)
        if not isinstance(document, dict) or "agents" not in document:
            continue  # nothing a certificate parser could read, before or after
        if old and _is_old(document):
            new = upgraded(document)
        elif not old and not _is_old(document):
            new = downgraded(document)
        else:
            continue
        connection.execute(
            update(ALLOCATIONS).where(ALLOCATIONS.c.id == allocation_id).values(certificate=new)
        )


def upgrade() -> None:
    _rewrite(op.get_bind(), old=True)


def downgrade() -> None:
    _rewrite(op.get_bind(), old=False)
