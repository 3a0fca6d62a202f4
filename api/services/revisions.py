"""Optimistic concurrency for updates: a resource's revision is its ETag.

A client reads a resource (its ``ETag`` header carries the revision) and sends the ETag back in
``If-Match`` with its change. A stale one gets 412 here; two writers that pass this check at
the same moment are still separated by the ORM's version counter, whose UPDATE names the
revision it read (the loser's StaleDataError becomes 412 in :mod:`api.deps`).
"""

from __future__ import annotations

from api.errors import PreconditionFailed


def revision_etag(revision: int) -> str:
    return f'"r{revision}"'


def check_if_match(if_match: str | None, revision: int) -> None:
    """Refuse the change when ``If-Match`` names another revision; no header means no check."""
    if if_match is None:
        return
    current = revision_etag(revision)
    tags = {tag.strip().removeprefix("W/") for tag in if_match.split(",")}
    if "*" not in tags and current not in tags:
        raise PreconditionFailed(
            f"If-Match {if_match.strip()} is stale: the resource is now at {current}",
            field="If-Match",
        )
