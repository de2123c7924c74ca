"""No budget holes: a model without a price cannot be spent on by a key or
team that has a budget (fail closed), unless the config says so."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import httpx

from support import BASE_CONFIG, Running

MASTER = "master-key-for-the-unpriced-tests-01"


def config(**extra: Any) -> dict[str, Any]:
    # A house model with gpt-image-2's rules and no price (price: null drops the inherited one).
    return {
        **BASE_CONFIG,
        "auth": {"master_key": MASTER},
        "catalog": {"house-model": {"extends": "gpt-image-2", "price": None}},
        "models": {**BASE_CONFIG["models"], "house-model": [{"provider": "demo"}]},
        **extra,
    }


def admin(gw: Running, method: str, path: str, **kwargs: Any) -> httpx.Response:
    return httpx.request(method, gw.base_url + path, headers={"Authorization": f"Bearer {MASTER}"}, timeout=30, **kwargs)


def key(gw: Running, **body: Any) -> dict[str, Any]:
    r = admin(gw, "POST", "/admin/keys", json={"name": "u", **body})
    assert r.status_code == 201, r.text
    return r.json()


def generate(gw: Running, secret: str, model: str = "house-model") -> httpx.Response:
    return httpx.post(f"{gw.base_url}/v1/images/generations", headers={"Authorization": f"Bearer {secret}"},
                      json={"model": model, "prompt": "x", "size": "1024x1024"}, timeout=30)  # fmt: skip


def test_a_budget_cannot_be_spent_on_an_unpriced_model(make_server: Any) -> None:
    gw: Running = make_server(config())
    budgeted = key(gw, budget_usd=1)
    for _ in range(3):
        r = generate(gw, budgeted["key"])
        assert r.status_code == 403, r.text
        assert r.json()["error"]["code"] == "model_not_priced" and r.json()["error"]["param"] == "model"
        assert "catalog.house-model.price" in r.json()["error"]["message"]
    view = admin(gw, "GET", f"/admin/keys/{budgeted['id']}").json()
    assert (Decimal(view["spent_usd"]), Decimal(view["reserved_usd"])) == (0, 0)
    # A priced model still works for the same key.
    assert generate(gw, budgeted["key"], model="test-pattern").status_code == 200
    # A key without a budget may use it: recorded at $0, estimated.
    free = key(gw)
    ok = generate(gw, free["key"])
    assert ok.status_code == 200 and ok.headers["x-imagegate-cost-usd"] == "0.000000"


def test_a_team_budget_counts_too(make_server: Any) -> None:
    gw: Running = make_server(config())
    assert admin(gw, "PUT", "/admin/teams/design", json={"budget_usd": 5}).status_code == 200
    member = key(gw, team="design")
    assert generate(gw, member["key"]).json()["error"]["code"] == "model_not_priced"
    loner = key(gw, team="no-budget-team")  # a team without a budget: nothing to keep
    assert generate(gw, loner["key"]).status_code == 200


def test_pricing_missing_allow_lets_budgeted_keys_through(make_server: Any) -> None:
    gw: Running = make_server(config(pricing_missing="allow"))
    budgeted = key(gw, budget_usd=1)
    r = generate(gw, budgeted["key"])
    assert r.status_code == 200 and r.headers["x-imagegate-cost-usd"] == "0.000000"
