"""The admin operations (accounting/admin.py) on a real SQLite database: the
one path both ``/admin`` and the ``imagegate keys|teams|usage|virtual-keys``
commands take, so neither opens database sessions of its own."""

from __future__ import annotations

import ast
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from imagegate.accounting.admin import Admin
from imagegate.accounting.keys import KeySpec
from imagegate.accounting.vault import Vault, new_encryption_key
from imagegate.db.engine import Database
from imagegate.db.migrate import upgrade_async
from imagegate.errors import ImagegateError, InvalidRequestError, NotFoundError

ROOT = Path(__file__).resolve().parents[2]


@asynccontextmanager
async def admin_on(tmp_path: Path, models: set[str] | None = None, providers: set[str] | None = None) -> AsyncIterator[Admin]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'admin.db'}"
    await upgrade_async(url)
    db = Database(url)
    try:
        yield Admin(db, Vault(new_encryption_key()), models=models, providers=providers)
    finally:
        await db.aclose()


async def test_keys_teams_and_reservations_through_the_facade(tmp_path: Path) -> None:
    async with admin_on(tmp_path) as admin:
        created = await admin.create_key(KeySpec(name="alice", team="design", budget_usd=2, rpm=5))
        assert created["key"].startswith("ig-") and created["budget_usd"] == "2.000000"
        shown = await admin.show_key(created["prefix"])
        assert shown["id"] == created["id"] and "key" not in shown  # the secret is shown once
        assert [k["id"] for k in await admin.list_keys("design")] == [created["id"]]
        assert await admin.list_keys("other") == []
        updated = await admin.update_key(created["id"], KeySpec(ipm=3), clear=["rpm"])
        assert (updated["ipm"], updated["rpm"]) == (3, None)
        assert await admin.list_teams() == [
            {"name": "design", "budget_usd": None, "budget_period": "total", "spent_usd": "0.000000", "reserved_usd": "0.000000"}
        ]
        team = await admin.update_team("design", 10, "monthly")
        assert (team["budget_usd"], team["budget_period"]) == ("10.000000", "monthly")
        assert (await admin.update_team("design", clear_budget=True))["budget_usd"] is None
        assert await admin.list_reservations(created["id"]) == []
        assert await admin.release_reservations(None) == {"released": 0, "released_usd": "0.000000"}
        revoked = await admin.revoke_key(created["id"])
        assert revoked["enabled"] is False and revoked["revoked_at"] is not None
        with pytest.raises(NotFoundError, match="No key"):
            await admin.show_key("key_nope")
        with pytest.raises(NotFoundError):
            await admin.release_reservations("ig-nope")
        with pytest.raises(InvalidRequestError) as info:
            await admin.usage(["colour"])
        assert info.value.param == "group_by" and "colour" in info.value.message
        assert await admin.usage(["key", "model"]) == []


async def test_models_and_providers_are_checked_only_when_named(tmp_path: Path) -> None:
    async with admin_on(tmp_path, models={"m1"}, providers={"demo"}) as admin:
        with pytest.raises(InvalidRequestError) as info:
            await admin.create_key(KeySpec(name="k", models=["m1", "nope"]))
        assert (info.value.param, info.value.code) == ("models", "model_not_found")
        assert (await admin.create_key(KeySpec(name="k", models=["m1"])))["models"] == ["m1"]
        with pytest.raises(InvalidRequestError) as info:
            await admin.put_virtual_key("vk", "elsewhere", "sk-x")
        assert info.value.param == "provider"
    async with admin_on(tmp_path) as admin:  # the CLI's: no model list to check against
        assert (await admin.create_key(KeySpec(name="k", models=["anything"])))["models"] == ["anything"]


async def test_virtual_keys_through_the_facade(tmp_path: Path) -> None:
    async with admin_on(tmp_path, providers={"demo"}) as admin:
        key = await admin.create_key(KeySpec(name="k"))
        stored = await admin.put_virtual_key("vk", "demo", "sk-top-secret", teams=["design"])
        assert stored == {"name": "vk", "provider": "demo", "teams": ["design"], "keys": []}
        granted = await admin.change_virtual_key_owners("vk", key_refs=[key["prefix"]], change="grant")
        assert granted["keys"] == [key["id"]] and granted["teams"] == ["design"]
        assert await admin.list_virtual_keys() == [granted]
        assert "sk-top-secret" not in repr(await admin.show_virtual_key("vk"))
        revoked = await admin.change_virtual_key_owners("vk", teams=["design"], key_refs=[key["id"]], change="revoke")
        assert (revoked["teams"], revoked["keys"]) == ([], [])
        assert await admin.delete_virtual_key("vk") == {"name": "vk", "deleted": True}
        with pytest.raises(NotFoundError):
            await admin.show_virtual_key("vk")
    async with admin_on(tmp_path) as admin:
        admin.vault = Vault(None)
        with pytest.raises(ImagegateError) as disabled:
            await admin.put_virtual_key("vk", "demo", "sk-x")
        assert disabled.value.code == "virtual_keys_disabled"


@pytest.mark.parametrize("path", ["imagegate/api/admin.py", "imagegate/cli_admin.py"])
def test_admin_routes_and_commands_open_no_database_sessions(path: str) -> None:
    """Both go through the facade: no transaction(), read() or session of their own."""
    tree = ast.parse((ROOT / path).read_text())
    calls = {node.func.attr for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)}
    assert not calls & {"transaction", "read"}
    names = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)} | {
        node.arg for node in ast.walk(tree) if isinstance(node, ast.arg)
    }
    assert "session" not in names
