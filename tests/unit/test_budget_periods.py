"""Budget periods start and end on UTC boundaries."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from imagegate.accounting.budgets import next_period, period_start

NOW = datetime(2026, 12, 31, 22, 30, tzinfo=UTC)  # a Thursday


def test_period_starts() -> None:
    assert period_start("daily", NOW) == datetime(2026, 12, 31, tzinfo=UTC)
    assert period_start("weekly", NOW) == datetime(2026, 12, 28, tzinfo=UTC)  # Monday
    assert period_start("monthly", NOW) == datetime(2026, 12, 1, tzinfo=UTC)
    assert period_start("total", NOW) == datetime(1970, 1, 1, tzinfo=UTC)


def test_next_periods_cross_the_year() -> None:
    assert next_period("daily", NOW) == datetime(2027, 1, 1, tzinfo=UTC)
    assert next_period("weekly", NOW) == datetime(2027, 1, 4, tzinfo=UTC)
    assert next_period("monthly", NOW) == datetime(2027, 1, 1, tzinfo=UTC)
    assert next_period("total", NOW) is None


def test_other_timezones_are_converted_to_utc() -> None:
    tokyo = NOW.astimezone(timezone(timedelta(hours=9)))  # already 1 January there
    assert period_start("daily", tokyo) == datetime(2026, 12, 31, tzinfo=UTC)
