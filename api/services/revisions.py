"""Optimistic concurrency for updates: a resource's revision is its ETag.

A client reads a resource (its ``ETag`` header carries the revision) and sends the ETag back in
``If-Match`` with its change. The header is required for every ``PATCH`` and ``DELETE`` of a
shared object (a tenant, a model): without it, 428. A stale one gets 412 here; two writers that
pass this check at the same moment are still separated by the ORM's version counter, whose
UPDATE names the revision it read (the loser's StaleDataError becomes 412 in :mod:`api.deps`).
So the answer is the same on both backends — before, PostgreSQL's row versions refused a
concurrent writer without ``If-Match`` while SQLite's serial writes let the last one win.
``If-Match: *`` is the explicit way to overwrite whatever is there (last writer wins, by
choice); optional routes (the artifact upload) check a header only when one is sent.
"""

from __future__ import annotations

from api.errors import PreconditionFailed, PreconditionRequired


def revision_etag(revision: int) -> str:
    return f'"r{revision}"'


def check_if_match(if_match: str | None, revision: int, *, required: bool = True) -> None:
    """Refuse the change when ``If-Match`` names another revision (412), or is missing where it
    is ``required`` (428)."""
    if if_match is None:
        if required:
            raise PreconditionRequired(
                "this change needs If-Match: the ETag of the resource as you read it (GET it "
                "first), or * to overwrite whatever is there",
                field="If-Match",
            )
        return
    current = revision_etag(revision)
    tags = {tag.strip().removeprefix("W/") for tag in if_match.split(",")}
    if "*" not in tags and current not in tags:
        raise PreconditionFailed(
            f"If-Match {if_match.strip()} is stale: the resource is now at {current}",
            field="If-Match",
        )
