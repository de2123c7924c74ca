"""Money as integer nano-dollars (1e-9 USD): exact for every published price."""

from __future__ import annotations

from decimal import Decimal

NANO = 10**9


def to_nano(usd: float | str | Decimal) -> int:
    return int((Decimal(str(usd)) * NANO).to_integral_value())


def to_usd(nusd: int) -> Decimal:
    return Decimal(nusd) / NANO


def usd_str(nusd: int) -> str:
    """For headers and tables: dollars with 6 decimals (micro-dollar precision)."""
    return f"{to_usd(nusd):.6f}"
