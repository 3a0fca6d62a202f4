"""The control plane's tables (SQLAlchemy 2 ORM); Alembic's ``env.py`` reads this metadata.

What the database holds: tenants with their weight and fairness criterion, their hashed API keys,
their models (zoo reference or uploaded TorchScript artifact, memory, SLA, demand), nodes with
their devices and hashed tokens, measured throughput profiles (which become valuations), and
the immutable allocations with their certificate and one stored plan per node, so that serving
a node its plan is one indexed read, and a bounded history of per-tenant SLA samples taken
from heartbeats. Tenants and models carry a ``revision`` used as the ORM's version counter: an
UPDATE names the revision it read, so two concurrent writers cannot both win, and the revision
is the resource's ETag.

The schema is made only by the migrations under ``migrations/``; nothing here creates tables.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# Named constraints, so migrations can drop and alter them the same way on SQLite and PostgreSQL.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(moment: datetime) -> datetime:
    """SQLite hands stored datetimes back without their zone; every stored one is UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


# SQLite: ids are never handed out twice, even after the newest row was deleted (migration
# 0003); PostgreSQL's sequences never go back anyway.
NEVER_REUSED: dict[str, Any] = {"sqlite_autoincrement": True}


class TenantRow(Base):
    __tablename__ = "tenants"
    __table_args__ = (NEVER_REUSED,)

    id: Mapped[int] = mapped_column(primary_key=True)
    # The tenant's identity in snapshots, plans and certificates; immutable once created.
    name: Mapped[str] = mapped_column(String(64), unique=True)
    weight: Mapped[float] = mapped_column(Float)
    criterion: Mapped[str] = mapped_column(String(16))
    revision: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    keys: Mapped[list[ApiKeyRow]] = relationship(
        back_populates="tenant", cascade="all, delete-orphan", passive_deletes=True
    )
    models: Mapped[list[ModelRow]] = relationship(
        back_populates="tenant", cascade="all, delete-orphan", passive_deletes=True
    )

    __mapper_args__ = {"version_id_col": revision}


class ApiKeyRow(Base):
    __tablename__ = "api_keys"
    __table_args__ = (NEVER_REUSED,)

    id: Mapped[int] = mapped_column(primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    # The first characters of the key, shown in listings so a tenant can tell its keys apart.
    prefix: Mapped[str] = mapped_column(String(16))
    # sha256 of the key: the key itself is shown once and never stored.
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Refused from this moment on (migration 0005); null: the key does not expire.
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    tenant: Mapped[TenantRow] = relationship(back_populates="keys")

    @property
    def scope(self) -> str:
        """The key's kind, told by its prefix: "inference" for an inference-only key
        (api.auth.INFERENCE_KEY_PREFIX), else "tenant"."""
        return "inference" if self.prefix.startswith("gfi_") else "tenant"


class ModelRow(Base):
    __tablename__ = "models"
    __table_args__ = (UniqueConstraint("tenant_id", "name"), NEVER_REUSED)

    id: Mapped[int] = mapped_column(primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    # "zoo:<arch>?scale=..&seed=..[&user_tables=..]" or "api:<model id>" once uploaded.
    artifact: Mapped[str] = mapped_column(String(256))
    memory_mb: Mapped[int] = mapped_column(Integer)
    replicas_wanted: Mapped[int] = mapped_column(Integer)
    sla_p99_ms: Mapped[float] = mapped_column(Float)
    demand_qps: Mapped[float] = mapped_column(Float)
    # ω_m: how its tenant's value is divided among its models (migration 0008; 1 before).
    weight: Mapped[float] = mapped_column(Float, default=1.0, server_default=text("1.0"))
    revision: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    tenant: Mapped[TenantRow] = relationship(back_populates="models")

    __mapper_args__ = {"version_id_col": revision}


class ArtifactRow(Base):
    """An uploaded TorchScript file; nodes whose plan seats the model download it."""

    __tablename__ = "artifacts"

    model_id: Mapped[int] = mapped_column(
        ForeignKey("models.id", ondelete="CASCADE"), primary_key=True
    )
    data: Mapped[bytes] = mapped_column(LargeBinary)
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(Integer)
    uploaded_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class NodeRow(Base):
    __tablename__ = "nodes"
    __table_args__ = (NEVER_REUSED,)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The plan version the daemon last said it serves, and its last heartbeat's body.
    running_version: Mapped[int | None] = mapped_column(Integer)
    report: Mapped[dict[str, Any] | None] = mapped_column(JSON)

    devices: Mapped[list[DeviceRow]] = relationship(
        back_populates="node",
        cascade="all, delete-orphan",
        passive_deletes=True,
        order_by="DeviceRow.id",
    )


class DeviceRow(Base):
    __tablename__ = "devices"
    __table_args__ = (UniqueConstraint("node_id", "device"), NEVER_REUSED)

    id: Mapped[int] = mapped_column(primary_key=True)
    node_id: Mapped[int] = mapped_column(ForeignKey("nodes.id", ondelete="CASCADE"), index=True)
    device: Mapped[str] = mapped_column(String(32))
    kind: Mapped[str] = mapped_column(String(8))
    memory_mb: Mapped[int] = mapped_column(Integer)
    streams: Mapped[int] = mapped_column(Integer)
    seats: Mapped[int] = mapped_column(Integer)

    node: Mapped[NodeRow] = relationship(back_populates="devices")


class ProfileRow(Base):
    """q_m(g, s): measured QPS of one replica of a model on one device with s = 1.. streams."""

    __tablename__ = "profiles"
    __table_args__ = (UniqueConstraint("model_id", "device_id"), NEVER_REUSED)

    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), index=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"))
    qps: Mapped[list[float]] = mapped_column(JSON)
    # The p99 bound it was measured against (migration 0008); null: the model's own SLA.
    sla_p99_ms: Mapped[float | None] = mapped_column(Float)
    measured_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class FootprintRow(Base):
    """The memory one replica of a model measured on one device (MiB), as its node reported."""

    __tablename__ = "footprints"
    __table_args__ = (UniqueConstraint("model_id", "device_id"), NEVER_REUSED)

    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), index=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"))
    memory_mb: Mapped[int] = mapped_column(Integer)
    measured_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class AllocationRow(Base):
    """One solve's result: immutable once written."""

    __tablename__ = "allocations"

    id: Mapped[int] = mapped_column(primary_key=True)
    # Increases with every allocation; it is the version of every node plan cut from it.
    version: Mapped[int] = mapped_column(Integer, unique=True)
    objective: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    solve_seconds: Mapped[float] = mapped_column(Float)
    certificate: Mapped[dict[str, Any]] = mapped_column(JSON)
    # tenant name -> tenant id at solve time, so a later tenant of the same name never sees
    # an earlier tenant's rows.
    tenant_ids: Mapped[dict[str, int]] = mapped_column(JSON)

    plans: Mapped[list[NodePlanRow]] = relationship(
        back_populates="allocation", cascade="all, delete-orphan", passive_deletes=True
    )


class NodePlanRow(Base):
    __tablename__ = "node_plans"
    # A node's newest plan is one index lookup: the plan route's only query.
    __table_args__ = (Index("ix_node_plans_node_version", "node_id", "version"),)

    allocation_id: Mapped[int] = mapped_column(
        ForeignKey("allocations.id", ondelete="CASCADE"), primary_key=True
    )
    node_id: Mapped[int] = mapped_column(
        ForeignKey("nodes.id", ondelete="CASCADE"), primary_key=True
    )
    version: Mapped[int] = mapped_column(Integer)
    plan: Mapped[dict[str, Any]] = mapped_column(JSON)

    allocation: Mapped[AllocationRow] = relationship(back_populates="plans")


class SolveLockRow(Base):
    """The single row whose lease serialises solves on SQLite (PostgreSQL uses an advisory lock)."""

    __tablename__ = "solve_lock"

    id: Mapped[int] = mapped_column(primary_key=True)
    holder: Mapped[str | None] = mapped_column(String(64))
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class SlaSampleRow(Base):
    """What one heartbeat says about one tenant on one node: the queries its replicas received,
    and answered within their SLA, since the node's previous heartbeat (the daemon reports
    cumulative counts; api/services/sla.py stores the differences). Pruned after
    ``settings.api.sla_history_s``."""

    __tablename__ = "sla_samples"
    __table_args__ = (NEVER_REUSED,)

    # 64-bit: a cluster writes a row per node and tenant every few seconds, for years.
    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True
    )
    node_id: Mapped[int] = mapped_column(ForeignKey("nodes.id", ondelete="CASCADE"))
    # The tenant's name as the daemon reports it (plans name tenants), not a key: samples
    # outlive a deleted tenant until they are pruned.
    tenant: Mapped[str] = mapped_column(String(64))
    # The id of the tenant the node's plan seated the counted model for (its allocation's
    # tenant_ids; migration 0009), which a tenant's own series reads: the name may since have
    # passed to a new tenant. Not a foreign key, for the same reason as the name; null where
    # the allocation did not name the tenant (the admin's series only).
    tenant_id: Mapped[int | None] = mapped_column(Integer)
    # When the API received the heartbeat; the counts cover the interval before it. Indexed:
    # every read is a time window and pruning is a range delete.
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    received: Mapped[int] = mapped_column(BigInteger)
    within_sla: Mapped[int] = mapped_column(BigInteger)


class IdempotencyRow(Base):
    """The outcome of a creating POST sent with ``Idempotency-Key`` (api.idempotency): a retry
    with the same key gets the same reply instead of creating again. Kept for a day."""

    __tablename__ = "idempotency_keys"
    __table_args__ = (UniqueConstraint("owner", "key"), NEVER_REUSED)

    id: Mapped[int] = mapped_column(primary_key=True)
    # Whose key it is ("admin", "tenant:<id>"): one caller's keys never answer another's.
    owner: Mapped[str] = mapped_column(String(32))
    key: Mapped[str] = mapped_column(String(255))
    # sha256 of the method, path and canonical body: a key reused for another request is refused.
    fingerprint: Mapped[str] = mapped_column(String(64))
    status: Mapped[int] = mapped_column(Integer)
    # The reply's body; null when it carried a secret shown once (a key or node token).
    body: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # The reply's ETag header (migration 0011), sent again with the body; null: it had none.
    etag: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
