"""BFL's stated cost (``bfl/wire.py`` ``credits_nusd``): credits (1 = $0.01)
as nano-dollars; none stated leaves the catalog's price; anything that is
not a non-negative number is a 502, never a guess."""

from __future__ import annotations

from typing import Any

import pytest

from imagegate.errors import UpstreamError
from imagegate.providers.bfl.wire import credits_nusd


@pytest.mark.parametrize("cost,nusd", [(4, 40_000_000), (4.5, 45_000_000), ("0.25", 2_500_000), (0, 0), (None, None)])
def test_a_stated_cost_in_credits_is_nano_dollars(cost: Any, nusd: int | None) -> None:
    assert credits_nusd(cost, "bfl") == nusd


@pytest.mark.parametrize(
    "cost", ["n/a", "", " ", -1, -0.5, "-3", True, False, {"credits": 4}, [4], "NaN", "Infinity", float("inf")]
)
def test_an_unreadable_cost_is_a_502(cost: Any) -> None:
    with pytest.raises(UpstreamError) as info:
        credits_nusd(cost, "bfl")
    assert (info.value.status, info.value.code) == (502, "invalid_upstream_response")
    assert "'bfl'" in info.value.message and "cost" in info.value.message
