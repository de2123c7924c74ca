"""Usage of unpriced models keeps the tokens its upstream reported, and
``imagegate usage reprice`` costs those rows once a price is added."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import yaml
from standin_openai import Fault, OpenAIStandIn
from test_admin_cli import MASTER, cli, ok

from support import run_server

ERR500 = Fault("status", 500, {"error": {"message": "boom", "type": "server_error", "param": None, "code": None}})
# The stand-in reports USAGE: input 200 (text 40, image 160), output 1056 image tokens.
TOKEN_PRICE = {"text_input_per_1m": 5, "image_input_per_1m": 10, "image_output_per_1m": 40}
PER_REQUEST = 40 * 5 + 160 * 10 + 1056 * 40  # micro-dollars: $0.04404


def _config(tmp_path: Path, base_url: str, **extra: Any) -> dict[str, Any]:
    return {
        "server": {"data_dir": str(tmp_path / "data")},
        "auth": {"master_key": MASTER},
        "routing": {"max_attempts": 1},
        # Budgeted keys may use unpriced models here (recorded at $0), so that there is usage to reprice.
        "pricing_missing": "allow",
        "providers": {"up": {"type": "openai", "base_url": base_url}},
        "models": {  # neither has a shipped price
            "flux-pro": [{"provider": "up", "model": "black-forest-labs/flux-pro"}],
            "sdxl": [{"provider": "up", "model": "stability/sdxl"}],
        },
        **extra,
    }


def _write(tmp_path: Path, name: str, config: dict[str, Any]) -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config))
    return path


def _by_model(config: Path) -> dict[str, dict[str, Any]]:
    return {row["model"]: row for row in json.loads(ok(cli(config, "usage", "--by", "model", "--format", "json")))}


def test_unpriced_usage_keeps_its_tokens_and_is_repriced_once_a_price_exists(tmp_path: Path) -> None:
    since = (datetime.now(UTC) - timedelta(hours=1)).strftime("%Y-%m-%d %H:%M:%S")
    with OpenAIStandIn() as up:
        config = _config(tmp_path, up.base_url)
        with run_server(config, tmp_path) as server:
            admin = {"Authorization": f"Bearer {MASTER}"}
            key = httpx.post(f"{server.base_url}/admin/keys", headers=admin, json={"name": "alice", "budget_usd": 5}).json()
            headers = {"Authorization": f"Bearer {key['key']}"}

            def generate(model: str, **body: Any) -> int:
                return httpx.post(f"{server.base_url}/v1/images/generations", headers=headers, timeout=30,
                                  json={"model": model, "prompt": "x", **body}).status_code  # fmt: skip

            assert [generate("flux-pro") for _ in range(3)] == [200] * 3
            assert [generate("sdxl", n=2) for _ in range(2)] == [200] * 2
            up.script.append(ERR500)
            assert generate("flux-pro") == 500  # an error row: never charged, never repriced
            usage = httpx.get(f"{server.base_url}/admin/usage", headers=admin, params={"group_by": "model"}).json()["data"]
            flux = next(row for row in usage if row["model"] == "flux-pro")
            # the reported usage is stored although no price exists (it used to be 0 tokens)
            assert (flux["input_tokens"], flux["output_tokens"], flux["cost_usd"]) == (3 * 200, 3 * 1056, "0.000000")

    pricing = {"flux-pro": TOKEN_PRICE, "sdxl": {"per_image": 0.02}}
    priced = _write(tmp_path, "priced.yaml", _config(tmp_path, "http://127.0.0.1:9/v1", pricing=pricing))

    dry = json.loads(ok(cli(priced, "usage", "reprice", "--since", since, "--dry-run", "--json")))
    assert (dry["examined"], dry["changed"], dry["written"]) == (5, 5, False)
    assert dry["difference_usd"] == f"{(3 * PER_REQUEST + 2 * 2 * 20_000) / 1e6:.6f}"
    assert _by_model(priced)["flux-pro"]["cost_usd"] == "0.000000"  # a dry run writes nothing

    out = ok(cli(priced, "usage", "reprice", "--since", since))
    assert "changed 5" in out and key["id"] in out and "spent budgets are unchanged" in out
    costs = _by_model(priced)
    assert (costs["flux-pro"]["cost_usd"], costs["sdxl"]["cost_usd"]) == (f"{3 * PER_REQUEST / 1e6:.6f}", "0.080000")
    assert costs["flux-pro"]["errors"] == 1
    # budgets hold what was charged when the requests ran
    assert json.loads(ok(cli(priced, "keys", "show", key["id"], "--json")))["spent_usd"] == "0.000000"

    again = json.loads(ok(cli(priced, "usage", "reprice", "--since", since, "--json")))
    assert (again["examined"], again["changed"]) == (5, 0)  # idempotent
    one = json.loads(ok(cli(priced, "usage", "reprice", "--since", since, "--model", "sdxl", "--until", since, "--json")))
    assert one["examined"] == 0

    # a price that goes away again is reported, not guessed
    unpriced = _write(tmp_path, "unpriced.yaml", _config(tmp_path, "http://127.0.0.1:9/v1"))
    left = json.loads(ok(cli(unpriced, "usage", "reprice", "--since", since, "--json")))
    assert left["unpriced"] == {"flux-pro": 3, "sdxl": 2} and left["changed"] == 0
