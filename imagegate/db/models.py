"""Tables. Money is stored as integer nano-dollars (1e-9 USD) so token prices
such as $2.50 per million tokens stay exact; times are UTC."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import JSON, BigInteger, Boolean, DateTime, Index, Integer, LargeBinary, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


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
    n: Mapped[int] = mapped_column(Integer)
    size: Mapped[str | None] = mapped_column(String(16), nullable=True)
    quality: Mapped[str | None] = mapped_column(String(16), nullable=True)
    input_text_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    input_image_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    output_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    cost_nusd: Mapped[int] = mapped_column(BigInteger, default=0)
    cost_estimated: Mapped[bool] = mapped_column(Boolean, default=False)
    latency_ms: Mapped[int] = mapped_column(Integer)
    status: Mapped[int] = mapped_column(Integer)
    error_code: Mapped[str | None] = mapped_column(String(64), nullable=True)


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
