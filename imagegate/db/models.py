"""Tables. Money is stored as integer nano-dollars (1e-9 USD) so token prices
such as $2.50 per million tokens stay exact; times are UTC."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    return datetime.now(UTC)


def aware(when: datetime) -> datetime:
    """SQLite hands back naive datetimes; every stored time is UTC."""
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    __table__: ClassVar[Table]  # every model here is mapped to a Table (not any FromClause)


class _Budgeted:
    """Budget columns shared by keys and teams."""

    budget_nusd: Mapped[int | None] = mapped_column(BigInteger, nullable=True)  # None: no budget
    budget_period: Mapped[str] = mapped_column(String(16), default="total")  # total|daily|weekly|monthly
    period_start: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    spent_nusd: Mapped[int] = mapped_column(BigInteger, default=0)
    reserved_nusd: Mapped[int] = mapped_column(BigInteger, default=0)


class Team(_Budgeted, Base):
    __tablename__ = "teams"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ApiKey(_Budgeted, Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    prefix: Mapped[str] = mapped_column(String(32))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    team: Mapped[str | None] = mapped_column(String(128), nullable=True, index=True)
    allowed_models: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)  # None: every model
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    rpm: Mapped[int | None] = mapped_column(Integer, nullable=True)  # requests per minute
    ipm: Mapped[int | None] = mapped_column(Integer, nullable=True)  # images per minute
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # Where this key's finished jobs are POSTed, and the Standard Webhooks
    # secret (whsec_...) they are signed with, encrypted like virtual keys.
    webhook_url: Mapped[str | None] = mapped_column(String(2048), nullable=True)
    webhook_secret_encrypted: Mapped[str | None] = mapped_column(String(512), nullable=True)


class VirtualKey(Base):
    """A provider credential stored encrypted, chosen per request by name."""

    __tablename__ = "virtual_keys"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    provider: Mapped[str] = mapped_column(String(128))
    secret_encrypted: Mapped[str] = mapped_column(String(2048))
    # Who may use it: teams by name, keys by id. Neither: admin keys only (fail closed).
    owner_teams: Mapped[list[str]] = mapped_column(JSON, default=list)
    owner_keys: Mapped[list[str]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class UsageRecord(Base):
    """One row per request. Never image bytes."""

    __tablename__ = "usage"
    __table_args__ = (Index("ix_usage_key_created", "key_id", "created_at"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(String(128), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    key_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    team: Mapped[str | None] = mapped_column(String(128), nullable=True)
    model: Mapped[str] = mapped_column(String(200))
    provider: Mapped[str | None] = mapped_column(String(128), nullable=True)
    upstream_model: Mapped[str | None] = mapped_column(String(200), nullable=True)
    endpoint: Mapped[str] = mapped_column(String(16))
    n: Mapped[int] = mapped_column(Integer)  # images delivered (and charged), on failed rows too
    size: Mapped[str | None] = mapped_column(String(16), nullable=True)
    quality: Mapped[str | None] = mapped_column(String(16), nullable=True)
    input_text_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    input_image_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # Of the input tokens, those the upstream served from its cache (cached rates).
    input_cached_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    output_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # The output tokens as billed at the image and the text rate, from the
    # upstream's usage (NULL: it reported none). Stored for unpriced models
    # too, so `imagegate usage reprice` can cost them once a price is added.
    output_image_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    output_text_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    cost_nusd: Mapped[int] = mapped_column(BigInteger, default=0)
    # What the upstream said it charged (Black Forest Labs' cost), when it did:
    # the row's cost is that, and `usage reprice` leaves it alone.
    upstream_cost_nusd: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    cost_estimated: Mapped[bool] = mapped_column(Boolean, default=False)
    latency_ms: Mapped[int] = mapped_column(Integer)
    status: Mapped[int] = mapped_column(Integer)
    error_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # Set on rows written by a settlement: unique, so a settlement replayed
    # from the journal after a database outage is applied once.
    settlement_id: Mapped[str | None] = mapped_column(String(64), nullable=True, unique=True)


class Reservation(Base):
    """A budget reservation in flight: the worst case of one request, held on
    a key (and its team) from admission until the request settles. Its owner
    and expiry let a restart or a sweep release what a crashed process left."""

    __tablename__ = "reservations"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    request_id: Mapped[str] = mapped_column(String(128))
    key_id: Mapped[str] = mapped_column(String(32), index=True)
    team: Mapped[str | None] = mapped_column(String(128), nullable=True)  # set when the team's budget holds it too
    amount_nusd: Mapped[int] = mapped_column(BigInteger)
    owner: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


class IdempotencyRecord(Base):
    """A request made with an Idempotency-Key: pending while it runs, then the
    response to replay for a retry with the same key and body."""

    __tablename__ = "idempotency"

    scope: Mapped[str] = mapped_column(String(64), primary_key=True)  # the caller's key id, or "*"
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(64))
    done: Mapped[bool] = mapped_column(Boolean, default=False)
    status: Mapped[int | None] = mapped_column(Integer, nullable=True)
    headers: Mapped[dict[str, str] | None] = mapped_column(JSON, nullable=True)
    body: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    # A pending claim belongs to one process until its lease ends; then (or
    # once that process is known to be gone) a retry may take it over.
    owner: Mapped[str | None] = mapped_column(String(128), nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class ImageJob(Base):
    """An asynchronous image job (``Prefer: respond-async``; gateway/jobs/).

    Its request is stored typed (``request``; the input images in
    ``job_inputs``), its caller as authentication found it, and the budget
    reservation admission made for it is owned by the job (``job:<id>``)
    until it settles. ``status``: queued -> running -> settling ->
    succeeded | failed | cancelled. A running or settling job belongs to
    ``lease_owner`` until ``lease_until``; after that any replica takes it
    over. ``outcome`` (set with ``settling``) is what the settlement charges."""

    __tablename__ = "image_jobs"
    __table_args__ = (
        Index("ix_image_jobs_status_created", "status", "created_at"),
        Index("ix_image_jobs_scope_created", "scope", "created_at"),
        Index("ix_image_jobs_team_created", "team", "created_at"),
        UniqueConstraint("idempotency_scope", "idempotency_key", name="uq_image_jobs_idempotency"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    scope: Mapped[str] = mapped_column(String(64))  # who may see it: the caller's identity
    key_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    team: Mapped[str | None] = mapped_column(String(128), nullable=True)
    caller: Mapped[dict[str, Any]] = mapped_column(JSON)
    idempotency_scope: Mapped[str | None] = mapped_column(String(64), nullable=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(255), nullable=True)
    fingerprint: Mapped[str | None] = mapped_column(String(64), nullable=True)
    endpoint: Mapped[str] = mapped_column(String(16))
    model: Mapped[str] = mapped_column(String(200))
    request: Mapped[dict[str, Any]] = mapped_column(JSON)
    request_id: Mapped[str] = mapped_column(String(128))
    base_url: Mapped[str] = mapped_column(String(1000))
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    queue_expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True, index=True)
    lease_owner: Mapped[str | None] = mapped_column(String(128), nullable=True)
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    upstream_started: Mapped[bool] = mapped_column(Boolean, default=False)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    reservation_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    reserved_nusd: Mapped[int] = mapped_column(BigInteger, default=0)
    input_bytes: Mapped[int] = mapped_column(BigInteger, default=0)  # its job_inputs' bytes (jobs.max_queued_mb_per_key)
    outcome: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    cost_nusd: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    result: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)  # the ImagesResponse as sent
    result_headers: Mapped[dict[str, str] | None] = mapped_column(JSON, nullable=True)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)  # the OpenAI error envelope
    status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # Filled by the webhooks package (gateway/webhooks/): where to POST the
    # finished job, and its deliveries' state and attempts.
    webhook_url: Mapped[str | None] = mapped_column(Text, nullable=True)
    webhook: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class JobInput(Base):
    """A job's input images and mask, as the client sent them; deleted when the job ends."""

    __tablename__ = "job_inputs"

    job_id: Mapped[str] = mapped_column(String(40), ForeignKey("image_jobs.id", ondelete="CASCADE"), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    field: Mapped[str] = mapped_column(String(32))  # "image", "image[1]", "mask"
    info: Mapped[dict[str, Any]] = mapped_column(JSON)  # imaging.probe.ImageInfo's fields
    data: Mapped[bytes] = mapped_column(LargeBinary)


class WebhookDelivery(Base):
    """The webhook outbox: one row per finished job to notify, kept until
    delivered or given up (gateway/webhooks/). ``id`` is the webhook-id,
    the same on every attempt, and derived from the job's id, so a job is
    enqueued once however many replicas try."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (Index("ix_webhook_deliveries_due", "state", "next_attempt_at"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    job_id: Mapped[str] = mapped_column(String(40), index=True)
    key_id: Mapped[str] = mapped_column(String(32))  # whose secret signs it
    url: Mapped[str] = mapped_column(String(2048))
    event: Mapped[str] = mapped_column(String(64))  # image.job.succeeded | failed | cancelled
    payload: Mapped[bytes] = mapped_column(LargeBinary)  # the body, exactly as sent and signed
    # [{at, status_code | error, duration_ms}], oldest first
    attempts: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    state: Mapped[str] = mapped_column(String(16), default="pending")  # pending | delivered | failed
    # When it is next due. A replica that claims it moves this past the
    # attempt's timeout, so one that dies mid-attempt leaves it due again.
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    first_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
